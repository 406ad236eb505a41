"""The `cuda` backend: the torch-free CUDA C++ kernels of csrc/cuda, bound in
csrc/cuda/binding.cpp."""

import functools
from typing import Optional

import torch

from ... import _extension
from .base import dtype_name
from .compiled import CompiledBackend


class CudaBackend(CompiledBackend):
    NAME = "cuda"
    DEVICES = ("cuda",)
    DTYPES = (torch.float32, torch.float16, torch.bfloat16)

    def why_unavailable(self, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        # A build without CUDA is the first thing to say on a CUDA tensor, before the dtype.
        if device.type == "cuda" and _extension.cuda_missing_reason() is not None:
            return _extension.cuda_missing_reason()
        return super().why_unavailable(device, dtype)

    def why_not_on_device(self, device: torch.device, dtype: torch.dtype, kernel_size: int) -> Optional[str]:
        # float32 at the generic path's largest kernel sizes needs more shared memory per
        # block than sm_86 and sm_89 have (csrc/cuda/launch.cuh)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _shared_memory_shortfall(index, dtype_name(dtype), kernel_size) or None

    def why_no_sync(self) -> Optional[str]:
        return ("the cuda backend's launchers run the statistics and apply passes as one call, so it "
                "cannot synchronize BatchNorm statistics across processes; use backend='triton' "
                "(backend='auto' picks it for synchronized blocks)")


@functools.lru_cache(maxsize=None)
def _shared_memory_shortfall(device_index: int, dtype: str, kernel_size: int) -> str:
    return _extension.load().cuda_shared_memory_shortfall(device_index, dtype, kernel_size)
