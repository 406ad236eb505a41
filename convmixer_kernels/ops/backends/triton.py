"""The `triton` backend: the Triton kernels of convmixer_kernels/triton, launched by
convmixer_kernels/triton/backend.py. Triton is imported at the first pass (or the first
question whether it can run), not with this module, so the package imports without it;
on CPU it runs only under TRITON_INTERPRET=1, which must be set before triton is imported."""

import importlib
import os
from typing import Optional

import torch

from .base import Backend


class TritonBackend(Backend):
    NAME = "triton"
    DEVICES = ("cuda", "cpu")
    DTYPES = (torch.float32, torch.float16, torch.bfloat16)

    def __init__(self):
        self._passes = None

    def passes(self):
        """convmixer_kernels.triton.backend, imported on first use."""
        if self._passes is None:
            try:
                self._passes = importlib.import_module("convmixer_kernels.triton.backend")
            except ImportError as exc:
                raise RuntimeError(f"mixer_block: backend 'triton' could not be imported: {exc}") from exc
        return self._passes

    def why_unavailable(self, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        why = super().why_unavailable(device, dtype)
        if why is None and device.type == "cpu" and dtype == torch.bfloat16:
            from ...triton import tuning

            if tuning.tensor_cores_enabled():
                # numpy has no bfloat16: the interpreter's tl.dot multiplies the raw bits.
                return (f"the Triton interpreter cannot run the bfloat16 tensor-core kernels (set "
                        f"{tuning.TENSOR_CORES_ENV}=0 for the CUDA-core ones)")
        return why

    def why_not_here(self, device: torch.device) -> Optional[str]:
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "the triton backend runs on CUDA tensors (on CPU only under TRITON_INTERPRET=1)"
        try:
            self.passes()
        except RuntimeError as exc:
            return str(exc)
        if device.type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
