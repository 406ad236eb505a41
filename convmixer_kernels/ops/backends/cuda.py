"""The `cuda` backend: the torch-free CUDA C++ kernels of csrc/cuda, bound in
csrc/cuda/binding.cpp."""

from typing import Optional

import torch

from ... import _extension
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

    def why_no_sync(self) -> Optional[str]:
        return ("the cuda backend's launchers run the statistics and apply passes as one call, so it "
                "cannot synchronize BatchNorm statistics across processes; use backend='triton' "
                "(backend='auto' picks it for synchronized blocks)")
