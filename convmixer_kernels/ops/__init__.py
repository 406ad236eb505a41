"""The ops. mixer_block: the public entry (mixer_block.py), its torch.library ops
(custom_ops.py), the backends (backends/) and how "auto" picks one (auto_select.py),
synchronized BatchNorm (sync.py). gemm_epilogue (gemm_epilogue.py): the pointwise block
and the stem as one GEMM with the activation and BatchNorm in its epilogue."""

from .backends import available_backends, explain_auto, register_backend, unavailable_backends
from .custom_ops import register_kernel_fakes
from .mixer_block import mixer_block
from .gemm_epilogue import gemm_epilogue, patch_conv_block

register_kernel_fakes()

__all__ = [
    "mixer_block",
    "gemm_epilogue",
    "patch_conv_block",
    "available_backends",
    "unavailable_backends",
    "register_backend",
    "explain_auto",
]
