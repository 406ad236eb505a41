"""Facts every backend and binding shares, written once.

- ACTIVATION_CODES: the activations' compile-time codes, the numbering of `enum class Act`
  in csrc/mixer_block_params.h (tests/ops/test_conventions.py checks the two agree through
  `_C.activation_codes`). The Triton kernels and the CUDA emulator take them from here.
- layout_of / memory_format_of: which dense layout a tensor is in. A tensor dense in both
  (C == 1, or H == W == 1) counts as NCHW, as csrc's bindings read it.
- acc_dtype: the dtype the kernels accumulate and reduce in, and that the BatchNorm
  vectors, statistics and parameter gradients take: float64 for float64, else float32.
"""

import torch
from torch import Tensor

ACTIVATION_CODES = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "silu": 3}
ACTIVATIONS = tuple(ACTIVATION_CODES)
MAX_KERNEL_SIZE = 31

NCHW = "nchw"
CHANNELS_LAST = "channels_last"
_MEMORY_FORMATS = {NCHW: torch.contiguous_format, CHANNELS_LAST: torch.channels_last}


def layout_of(x: Tensor) -> str:
    """"nchw" or "channels_last" for a dense x; ValueError for any other strides (the op
    makes x dense before any backend sees it, see memory_format_of)."""
    if x.is_contiguous():
        return NCHW
    if x.is_contiguous(memory_format=torch.channels_last):
        return CHANNELS_LAST
    raise ValueError(f"x must be contiguous NCHW or channels_last, got strides {x.stride()}")


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The dense memory format x is in or, for other strides (a slice, a permutation), the
    one its strides are closest to, so the output keeps the caller's layout as eager's conv
    does."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.channels_last if x.stride(1) < x.stride(3) else torch.contiguous_format


def memory_format(layout: str) -> torch.memory_format:
    return _MEMORY_FORMATS[layout]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
