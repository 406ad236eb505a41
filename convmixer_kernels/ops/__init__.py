"""The mixer_block and gemm_epilogue ops: registration, autograd, backend dispatch."""

from . import kernel_fakes
from .backends import available_backends, unavailable_backends
from .mixer_block import mixer_block
from .gemm_epilogue import gemm_epilogue, patch_conv_block

kernel_fakes.register()

__all__ = ["mixer_block", "gemm_epilogue", "patch_conv_block", "available_backends", "unavailable_backends"]
