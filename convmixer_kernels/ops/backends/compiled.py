"""The passes of the compiled extension convmixer_kernels._C. The kernel-level ops in
torch.ops.convmixer_kernels dispatch on the tensors' device, so the `cpu` backend
(csrc/cpu) and the `cuda` backend (csrc/cuda) call the same ops."""

from types import SimpleNamespace

import torch

from .base import Backend

_PASSES = ("forward_eval", "forward_train", "backward", "forward_stats", "backward_sums", "backward_with_sums")


class CompiledBackend(Backend):
    _ops = None

    def passes(self):
        # Looked up on first use: the ops exist only once the extension has loaded.
        if CompiledBackend._ops is None:
            ops = torch.ops.convmixer_kernels
            CompiledBackend._ops = SimpleNamespace(**{p: getattr(ops, f"_kernel_{p}") for p in _PASSES})
        return CompiledBackend._ops
