"""convmixer_kernels: ConvMixer's mixer block x + BN(act(dwconv(x))) as one fused op.

    import convmixer_kernels as cmk
    y = cmk.mixer_block(x, w, b, gamma, beta, running_mean, running_var, training=False)
    y = cmk.patch_conv_block(x, w, b, gamma, beta, rm, rv, training=False)   # Conv2d(stride=kernel)->act->BN
    block = cmk.FusedMixerBlock(dim=768, kernel_size=7, activation="relu")
    n = cmk.swap_mixer_blocks(model)          # a timm / mmpretrain / official ConvMixer
    model = cmk.convert_sync_batchnorm(model) # synchronized BN under DistributedDataParallel
    cmk.available_backends("cuda")            # e.g. ['cuda', 'triton', 'eager']
    cmk.explain_auto((128, 768, 32, 32), 7)   # which backend "auto" takes there, and why
    cmk.cpu_capability()                      # the CPU kernels' level, e.g. 'avx512'
    model = cmk.get_model("convmixer_768_32", pretrained="convmixer_768_32.pth")
"""

import importlib

from ._extension import cpu_capabilities, cpu_capability
from .models.convmixer import ConvMixer
from .modules import FusedMixerBlock, convert_sync_batchnorm, swap_mixer_blocks, unswap_mixer_blocks
from .fused_sequential import FusedSequential
from .ops import (
    available_backends,
    explain_auto,
    gemm_epilogue,
    mixer_block,
    patch_conv_block,
    register_backend,
    unavailable_backends,
)

__version__ = "0.1.0"

# The model layer's image and export side (Pillow, onnx) loads on first use, so the
# kernel library imports with torch alone.
_LAZY = {
    "get_model": "models",
    "create_model": "models",
    "list_models": "models",
    "load_checkpoint": "models.checkpoint",
    "convert_state_dict": "models.checkpoint",
    "inference_model": "models.inference",
    "preprocess": "models.preprocess",
    "imagenet_classes": "models.imagenet_classes",
    "export_onnx": "cli.export",
    "count_model": "cli.count",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConvMixer",
    "FusedMixerBlock",
    "FusedSequential",
    "available_backends",
    "convert_sync_batchnorm",
    "cpu_capabilities",
    "cpu_capability",
    "explain_auto",
    "gemm_epilogue",
    "mixer_block",
    "patch_conv_block",
    "register_backend",
    "swap_mixer_blocks",
    "unavailable_backends",
    "unswap_mixer_blocks",
    *_LAZY,
]
