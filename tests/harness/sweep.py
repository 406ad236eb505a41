"""The parity sweep of docs/design.md ("Numerics and tests"), defined once: which sizes,
kernel sizes, layouts, dtypes, activations and optional parameters each backend's parity
test runs (tests/ops/test_parity.py), and the one rule for NaN and inf.

Every backend runs the same tests; a `Sweep` says how far each axis goes for it. The
compiled backends and eager run `FULL`, the GPU backends `GPU` (more kernel sizes, and the
sizes in every dtype they take). The Triton interpreter runs each program of a grid in
Python and the CUDA emulator each thread as a fiber, so they run `INTERPRETER` and
`EMULATOR`: the same axes on fewer and smaller cases. Backend-specific tests (kernel
paths, tile configs, emulator faults) pick their own shapes on top of these.
"""

import itertools
from typing import NamedTuple, Tuple

import torch

from convmixer_kernels.conventions import ACTIVATIONS
from convmixer_kernels.reference import mixer_block_reference
from tests.harness.parity import ATOL, rel_err

KERNEL_SIZES = (1, 2, 3, 7, 8, 9, 15, 31)
LAYOUTS = ("nchw", "channels_last", "sliced")
DENSE_LAYOUTS = ("nchw", "channels_last")
# (N, H, W): odd sizes, batch 1, a 1x1 and a one-column image.
SIZES = ((1, 7, 7), (3, 31, 31), (1, 33, 33), (3, 1, 1), (2, 1, 1), (2, 5, 12), (1, 32, 1))
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MOMENTA = (0.0, 0.3, 1.0)
# (bias, affine, running) of the blocks users build besides the default one.
OPTIONAL_PARAMETERS = (
    (False, True, True),     # Conv2d(bias=False)
    (True, False, True),     # BatchNorm2d(affine=False)
    (True, True, False),     # BatchNorm2d(track_running_stats=False): batch stats in eval too
    (False, False, False),
)
MODES = (False, True)  # training


class Sweep(NamedTuple):
    """How far each axis of the parity sweep goes for one backend. A shape is (N, C, H, W),
    a case (N, C, H, W, k)."""

    kernel_sizes: Tuple[int, ...]  # test_kernel_sizes_and_layouts: every k in every layout and mode
    layouts: Tuple[str, ...]
    kernel_shape: Tuple[int, int, int, int]
    sizes: Tuple[Tuple[int, int, int], ...]  # test_sizes: (N, H, W) with size_channels, k in size_kernels
    size_channels: int
    size_kernels: Tuple[int, ...]
    size_dtypes: Tuple[torch.dtype, ...]
    dtypes: Tuple[torch.dtype, ...]  # test_activations_and_dtypes: every activation in every dtype
    activations: Tuple[str, ...]
    activation_case: Tuple[int, int, int, int, int]
    # The (training, layout) pairs each activation, dtype and optional-parameter case runs
    # in; test_kernel_sizes_and_layouts crosses every mode with every layout.
    modes_and_layouts: Tuple[Tuple[bool, str], ...]
    optional_parameters: Tuple[Tuple[bool, bool, bool], ...]
    optional_case: Tuple[int, int, int, int, int]
    momenta: Tuple[float, ...]
    wide_channels: Tuple[int, ...]  # test_wide_channels: C not a multiple of any vector width


_EVERY_MODE_AND_LAYOUT = tuple(itertools.product(MODES, DENSE_LAYOUTS))
# Each mode once and each layout once: the other two pairs run in test_kernel_sizes_and_layouts.
_EACH_MODE_AND_LAYOUT = ((False, "nchw"), (True, "channels_last"))

FULL = Sweep(
    kernel_sizes=KERNEL_SIZES, layouts=LAYOUTS, kernel_shape=(2, 17, 13, 13),
    sizes=SIZES, size_channels=33, size_kernels=(3, 8, 9), size_dtypes=(torch.float32,),
    dtypes=DTYPES, activations=ACTIVATIONS, activation_case=(2, 19, 11, 11, 7),
    modes_and_layouts=_EVERY_MODE_AND_LAYOUT, optional_parameters=OPTIONAL_PARAMETERS, optional_case=(2, 9, 9, 9, 5), momenta=MOMENTA, wide_channels=(257,),
)

# On a GPU the kernels change with k (tensor cores at 3, 5, 7, 9; every k a template) and
# with the sizes' alignment in every dtype; a 32x32 image is the published shape.
GPU = FULL._replace(
    kernel_sizes=tuple(sorted({*KERNEL_SIZES, 5, 11, 12})), sizes=(*SIZES, (2, 32, 32)),
    size_dtypes=(torch.float32, torch.float16, torch.bfloat16),
)

# The op layer makes a sliced x dense before any backend sees it (FULL runs that), and
# sets the running statistics from the batch ones whatever the backend (momenta), so the
# slow stand-ins run neither. Float64 is no GPU dtype; the interpreter also leaves bfloat16
# to a GPU (it rounds float32 -> bfloat16 toward zero, not to nearest as the hardware does).
EMULATOR = FULL._replace(
    kernel_sizes=tuple(sorted({*KERNEL_SIZES, 5})),  # and 5: a tensor-core k
    layouts=DENSE_LAYOUTS, sizes=((1, 7, 7), (3, 1, 1), (2, 5, 12), (1, 32, 1)), size_channels=9,
    size_kernels=(3, 9), dtypes=(torch.float32, torch.bfloat16, torch.float16),
    modes_and_layouts=_EACH_MODE_AND_LAYOUT, momenta=(),
)
INTERPRETER = EMULATOR._replace(
    kernel_sizes=(1, 2, 3, 7, 8), kernel_shape=(1, 3, 7, 9), sizes=((1, 32, 1),), size_channels=3, size_kernels=(3,),
    dtypes=(torch.float32, torch.float16), activation_case=(2, 3, 5, 7, 3), optional_case=(2, 3, 5, 5, 2),
    wide_channels=(),
)
__all__ = ["ACTIVATIONS", "DENSE_LAYOUTS", "DTYPES", "EMULATOR", "FULL", "GPU", "INTERPRETER", "KERNEL_SIZES",
           "LAYOUTS", "MOMENTA", "OPTIONAL_PARAMETERS", "SIZES", "Sweep", "assert_nonfinite_as_in_reference",
           "dtype_id"]


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
