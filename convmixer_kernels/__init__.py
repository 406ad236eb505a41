"""convmixer_kernels: ConvMixer's mixer block x + BN(act(dwconv(x))) as one fused op.

    import convmixer_kernels as cmk
    y = cmk.mixer_block(x, w, b, gamma, beta, running_mean, running_var, training=False)
    block = cmk.FusedMixerBlock(dim=768, kernel_size=7, activation="relu")
    n = cmk.swap_mixer_blocks(model)          # a timm / mmpretrain / official ConvMixer
    cmk.available_backends("cuda")            # e.g. ['cuda', 'triton', 'eager']
"""

from .modules import ConvMixer, FusedMixerBlock, swap_mixer_blocks, unswap_mixer_blocks
from .ops import available_backends, mixer_block, unavailable_backends

__version__ = "0.1.0"

__all__ = [
    "ConvMixer",
    "FusedMixerBlock",
    "available_backends",
    "mixer_block",
    "swap_mixer_blocks",
    "unavailable_backends",
    "unswap_mixer_blocks",
]
