"""What a backend of the mixer_block op is: one class per backend, declaring where it runs
and implementing the passes. The registry (ops/backends/__init__.py) holds one instance
of each; `register_backend` adds another (tests/harness/cuda_emulator registers the
emulated CUDA kernels this way).

Every pass takes inputs already normalized by ops/mixer_block.py: x dense NCHW or
channels_last (conventions.layout_of), the conv weight contiguous in x's dtype, the BN
vectors contiguous in the accumulation dtype (conventions.acc_dtype):

    forward_eval(x, weight, bias, gamma, beta, running_mean, running_var, eps, activation) -> y
    forward_train(x, weight, bias, gamma, beta, eps, activation) -> (y, mean, biased var)
    backward(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, activation)
        -> (dx, dweight, dbias, dgamma, dbeta)   # the last four in the accumulation dtype

Synchronized BatchNorm (ops/sync.py) runs the training passes one by one with a
collective between them (forward_eval, given the global statistics, is the apply pass):

    forward_stats(x, weight, bias, activation) -> (mean, biased var)   # the statistics pass
    backward_sums(grad_out, x, weight, bias, mean, var, eps, activation)
        -> (sum dy, sum dy * xhat)                                  # the backward's first pass
    backward_with_sums(grad_out, x, weight, bias, gamma, mean, var, eps, sum_dy, sum_dy_xhat,
                       count, activation) -> (dx, dweight, dbias)    # its other passes

with sums and count (N*H*W) over every process. A backend that cannot run them says why
in why_no_sync(); "auto" then skips it for synchronized calls.
"""

from typing import Optional, Tuple

import torch

from ...conventions import MAX_KERNEL_SIZE


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class Backend:
    """A backend: NAME, the device types and dtypes it runs, its kernel sizes, and why
    it cannot run somewhere (None where it can)."""

    NAME: str = ""
    DEVICES: Tuple[str, ...] = ()  # device types; () for any
    DTYPES: Tuple[torch.dtype, ...] = ()
    KERNEL_SIZES = range(1, MAX_KERNEL_SIZE + 1)

    def why_unavailable(self, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        """None if the backend runs on `device` for `dtype`, else a sentence saying why not.
        The declared devices and dtypes first, then what only the running machine can say."""
        if self.DEVICES and device.type not in self.DEVICES:
            where = " or ".join(self.DEVICES)
            return f"the {self.NAME} backend runs on {where} tensors, not {device.type}"
        if dtype not in self.DTYPES:
            names = [dtype_name(d) for d in self.DTYPES]
            supported = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
            return f"the {self.NAME} kernels support {supported}, not {dtype_name(dtype)}"
        return self.why_not_here(device)

    def why_not_here(self, device: torch.device) -> Optional[str]:
        """What the running machine lacks for `device` (a build, a library, a GPU), or None."""
        return None

    def why_no_sync(self) -> Optional[str]:
        """None if the backend runs synchronized BatchNorm's pieces, else why not."""
        return None

    def why_not_on_device(self, device: torch.device, dtype: torch.dtype, kernel_size: int) -> Optional[str]:
        """What `device` lacks for a block of this kernel size in `dtype`, forward and
        backward (the cuda kernels' shared memory per block), or None; asked only where
        why_unavailable(device, dtype) is None."""
        return None

    def why_not_kernel_size(self, kernel_size: int) -> Optional[str]:
        if kernel_size in self.KERNEL_SIZES:
            return None
        sizes = self.KERNEL_SIZES
        return f"the {self.NAME} kernels support kernel sizes {sizes.start}..{sizes.stop - 1}, not {kernel_size}"

    def passes(self):
        """The object (a module, a namespace of ops) whose functions are the passes."""
        raise NotImplementedError(f"backend {self.NAME!r} does not say where its passes are")

    def forward_eval(self, *args):
        return self.passes().forward_eval(*args)

    def forward_train(self, *args):
        return self.passes().forward_train(*args)

    def backward(self, *args):
        return self.passes().backward(*args)

    def forward_stats(self, *args):
        return self.passes().forward_stats(*args)

    def backward_sums(self, *args):
        return self.passes().backward_sums(*args)

    def backward_with_sums(self, *args):
        return self.passes().backward_with_sums(*args)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.NAME!r}>"
