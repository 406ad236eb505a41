"""The `cpu` backend: the C++ kernels of csrc/cpu (OpenMP + SIMD, one build per
instruction-set level), bound in csrc/cpu/binding.cpp."""

from typing import Optional

import torch

from ... import _extension
from .compiled import CompiledBackend


class CpuBackend(CompiledBackend):
    NAME = "cpu"
    DEVICES = ("cpu",)
    DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    def why_not_here(self, device: torch.device) -> Optional[str]:
        return _extension.load_error()
