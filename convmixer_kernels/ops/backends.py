"""The backends of the mixer_block op and how "auto" picks one.

A backend is a module (or object) with three pass functions, all taking inputs already
normalized by ops/mixer_block.py (x dense NCHW or channels_last, conv weight contiguous in
x's dtype, BN vectors contiguous in the accumulation dtype):

    forward_eval(x, weight, bias, gamma, beta, running_mean, running_var, eps, activation) -> y
    forward_train(x, weight, bias, gamma, beta, eps, activation) -> (y, mean, biased var)
    backward(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, activation)
        -> (dx, dweight, dbias, dgamma, dbeta)   # the last four in the accumulation dtype

and why_unavailable(device, dtype) -> None, or a sentence saying why it cannot run there.

Synchronized BatchNorm (ops/sync.py) runs the training passes one by one with a
collective between them, through three more functions (forward_eval, given the global
statistics, is the apply pass):

    forward_stats(x, weight, bias, activation) -> (mean, biased var)   # the statistics pass
    backward_sums(grad_out, x, weight, bias, mean, var, eps, activation)
        -> (sum dy, sum dy * xhat)                                  # the backward's first pass
    backward_with_sums(grad_out, x, weight, bias, gamma, mean, var, eps, sum_dy, sum_dy_xhat,
                       count, activation) -> (dx, dweight, dbias)    # its other passes

with sums and count (N*H*W) over every process. A backend that cannot run them has
why_no_sync() -> a sentence; "auto" then skips it for synchronized calls.
"""

import importlib
import os
import warnings
from typing import Dict, List, Optional

import torch

from .. import _extension
from . import auto_select

BACKEND_NAMES = ("cuda", "triton", "cpu", "eager")

# Fastest first, per device type; "auto" takes the first available one.
_AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


class CompiledBackend:
    """The C++ kernels of convmixer_kernels._C (csrc/cpu or csrc/cuda), one per device type."""

    def __init__(self, device_type: str):
        self.device_type = device_type

    def why_unavailable(self, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        if device.type != self.device_type:
            return f"the {self.device_type} backend runs on {self.device_type} tensors, not {device.type}"
        if self.device_type == "cuda":
            reason = _extension.cuda_missing_reason()
            if reason is None and dtype == torch.float64:
                reason = "the cuda kernels support float32, float16 and bfloat16, not float64"
            return reason
        return _extension.load_error()

    def forward_eval(self, *args):
        return torch.ops.convmixer_kernels.fused_forward_eval(*args)

    def forward_train(self, *args):
        return torch.ops.convmixer_kernels.fused_forward_train(*args)

    def backward(self, *args):
        return torch.ops.convmixer_kernels.fused_backward(*args)

    def why_no_sync(self) -> Optional[str]:
        if self.device_type == "cuda":
            return ("the cuda backend's launchers run the statistics and apply passes as one call, so it "
                    "cannot synchronize BatchNorm statistics across processes; use backend='triton' "
                    "(backend='auto' picks it for synchronized blocks)")
        return None

    def forward_stats(self, *args):
        return torch.ops.convmixer_kernels.fused_forward_stats(*args)

    def backward_sums(self, *args):
        return torch.ops.convmixer_kernels.fused_backward_sums(*args)

    def backward_with_sums(self, *args):
        return torch.ops.convmixer_kernels.fused_backward_with_sums(*args)


_MODULES = {"eager": "convmixer_kernels.ops.eager", "triton": "convmixer_kernels.triton.backend"}
_COMPILED = {"cpu": CompiledBackend("cpu"), "cuda": CompiledBackend("cuda")}


def get_backend(name: str):
    if name in _COMPILED:
        return _COMPILED[name]
    if name in _MODULES:
        try:
            return importlib.import_module(_MODULES[name])
        except ImportError as exc:
            raise RuntimeError(f"mixer_block: backend {name!r} could not be imported: {exc}") from exc
    raise ValueError(f"mixer_block: backend must be 'auto' or one of {BACKEND_NAMES}, got {name!r}")


def why_unavailable(name: str, device: torch.device, dtype: torch.dtype, synced: bool = False) -> Optional[str]:
    try:
        backend = get_backend(name)
    except RuntimeError as exc:
        return str(exc)
    reason = backend.why_unavailable(device, dtype)
    if reason is None and synced:
        reason = getattr(backend, "why_no_sync", lambda: None)()
    return reason


def available_backends(device="cpu", dtype: torch.dtype = torch.float32) -> List[str]:
    """The backends that can run the mixer block on `device` for `dtype`, fastest first."""
    device = torch.device(device)
    order = _AUTO_ORDER.get(device.type, ()) + ("eager",)
    return [name for name in order if why_unavailable(name, device, dtype) is None]


def unavailable_backends(device="cpu", dtype: torch.dtype = torch.float32) -> Dict[str, str]:
    """Each backend that cannot run on `device`, with the reason."""
    device = torch.device(device)
    reasons = {name: why_unavailable(name, device, dtype) for name in BACKEND_NAMES}
    return {name: why for name, why in reasons.items() if why is not None}


_warned_fallback = set()


# Evaluated once at trace time under torch.compile: the answer depends only on constants.
@torch.compiler.assume_constant_result
def resolve(name: str, device: torch.device, dtype: torch.dtype,
            problem: Optional[auto_select.Problem] = None, synced: bool = False) -> str:
    """The concrete backend for a call: `name` itself after checking it can run, or for
    "auto" the fastest available one for `problem` (ops/auto_select.py), warning once
    when only the eager fallback is left. synced: a call with statistics synchronized
    across processes, which only backends with the pieces of ops/sync.py can run."""
    if name != "auto":
        reason = why_unavailable(name, device, dtype, synced)
        if reason is not None:
            raise RuntimeError(f"mixer_block: backend {name!r} cannot run here: {reason}")
        return name
    available = [c for c in _AUTO_ORDER.get(device.type, ()) if why_unavailable(c, device, dtype, synced) is None]
    if available:
        return auto_select.choose(available, problem)
    key = (device.type, dtype, synced)
    if key not in _warned_fallback and not os.environ.get("CONVMIXER_KERNELS_QUIET_FALLBACK"):
        _warned_fallback.add(key)
        reasons = "; ".join(
            f"{n}: {why}" for n in BACKEND_NAMES if n != "eager"
            for why in [why_unavailable(n, device, dtype, synced)] if why is not None
        )
        warnings.warn(
            f"convmixer_kernels: no fused backend for {device.type} {dtype} ({reasons}); "
            "using the slow eager backend",
            RuntimeWarning,
            stacklevel=3,
        )
    return "eager"
