"""The parity sweep of docs/design.md ("Numerics and tests"), defined once: the sizes,
kernel sizes, dtypes and activations every backend's parity test runs
(tests/ops/test_parity.py), and the one rule for NaN and inf. Backend-specific tests
(kernel paths, tile configs, emulator faults) pick their own shapes on top of these."""

import torch

from convmixer_kernels.conventions import ACTIVATIONS
from convmixer_kernels.reference import mixer_block_reference
from tests.harness.parity import ATOL, rel_err

KERNEL_SIZES = (1, 2, 3, 7, 8, 9, 15, 31)
LAYOUTS = ("nchw", "channels_last", "sliced")
DENSE_LAYOUTS = ("nchw", "channels_last")
# (N, H, W): odd sizes, batch 1, a 1x1 and a one-column image; with C = 33 channels.
SIZES = ((1, 7, 7), (3, 31, 31), (1, 33, 33), (3, 1, 1), (2, 1, 1), (2, 5, 12), (1, 32, 1))
SIZE_KERNELS = (3, 8, 9)
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MOMENTA = (0.0, 0.3, 1.0)
__all__ = ["ACTIVATIONS", "DENSE_LAYOUTS", "DTYPES", "KERNEL_SIZES", "LAYOUTS", "MOMENTA", "SIZES", "SIZE_KERNELS",
           "assert_nonfinite_as_in_reference", "dtype_id"]


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def assert_nonfinite_as_in_reference(y: torch.Tensor, args, what: str = "") -> None:
    """The NaN/inf rule: NaN exactly where reference.py in float64 gives NaN, inf exactly
    where it gives inf (float32 eager's gelu(+inf) = NaN is eager's rounding, not the
    spec), and the finite values within the parity bound: twice eager's own error at y's
    precision, plus the atol of y's dtype. args: the eval block's seven tensors."""
    as64 = [t.detach().double().cpu() if t is not None else None for t in args]
    ref = mixer_block_reference(*as64, training=False)
    eager = mixer_block_reference(*args, training=False).cpu()
    y = y.cpu()
    assert torch.equal(y.isnan(), ref.isnan()), f"NaN placement differs from the reference {what}"
    assert torch.equal(y.isinf(), ref.isinf()), f"inf placement differs from the reference {what}"
    finite = ref.isfinite() & eager.isfinite()
    bound = 2 * rel_err(eager[finite], ref[finite]) + ATOL[y.dtype]
    assert rel_err(y[finite], ref[finite]) <= bound, f"finite values beyond the parity bound {what}"
