"""The eager PyTorch definition of the mixer block and of ConvMixer's plain modules.

This is the spec: every backend is tested against `mixer_block_reference` run in float64.
It uses only stock PyTorch ops, spelled out so that each rule of the operator is visible:
'same' padding for odd and even k, the four activations, BatchNorm's train/eval rules.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conventions import ACTIVATIONS, MAX_KERNEL_SIZE  # noqa: F401  (re-exported: part of the spec)


def same_padding(kernel_size: int) -> Tuple[int, int]:
    """(before, after) zero padding that keeps the size for stride 1: an even k pads
    one more after than before, as torch's padding='same' does."""
    before = (kernel_size - 1) // 2
    return before, kernel_size - 1 - before


def apply_activation(h: Tensor, activation: str) -> Tensor:
    if activation == "gelu":
        return F.gelu(h)
    if activation == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if activation == "relu":
        return F.relu(h)
    if activation == "silu":
        return F.silu(h)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def activation_module(activation: str) -> nn.Module:
    modules = {
        "gelu": lambda: nn.GELU(),
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
        "relu": lambda: nn.ReLU(),
        "silu": lambda: nn.SiLU(),
    }
    if activation not in modules:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return modules[activation]()


def activation_name(module: nn.Module) -> Optional[str]:
    """The name of a supported activation module, or None."""
    if type(module) is nn.GELU:
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.SiLU:
        return "silu"
    return None


def depthwise_conv_same(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Depthwise k x k convolution, stride 1, dilation 1, zero 'same' padding."""
    k = weight.shape[-1]
    before, after = same_padding(k)
    padded = F.pad(x, (before, after, before, after))
    return F.conv2d(padded, weight, bias, groups=x.shape[1])


def mixer_block_reference(
    x: Tensor,
    conv_weight: Tensor,
    conv_bias: Optional[Tensor],
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str = "gelu",
) -> Tensor:
    """y = x + BN(act(dwconv(x))), as nn.BatchNorm2d computes BN.

    training (or no running statistics): normalize with the biased batch variance over
    (N, H, W); when running statistics are given and training, update them in place with
    the unbiased variance and `momentum`. Eval with running statistics: use them.
    """
    h = depthwise_conv_same(x, conv_weight, conv_bias)
    return x + normalized_activation(h, bn_weight, bn_bias, running_mean, running_var, training=training,
                                     momentum=momentum, eps=eps, activation=activation)


def normalized_activation(
    h: Tensor,
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str = "gelu",
) -> Tensor:
    """BN(act(h)) of the block for a given conv output h (see mixer_block_reference)."""
    use_batch_stats = training or running_mean is None
    return F.batch_norm(
        apply_activation(h, activation), running_mean, running_var, bn_weight, bn_bias, use_batch_stats, momentum, eps
    )


class Residual(nn.Module):
    """fn(x) + x, with the attribute name the official code, timm and mmpretrain use."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) + x


def plain_mixer_block(dim: int, kernel_size: int, activation: str = "gelu") -> Residual:
    """The eager mixer block: Residual(Conv2d depthwise 'same' -> act -> BatchNorm2d)."""
    return Residual(
        nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"),
            activation_module(activation),
            nn.BatchNorm2d(dim),
        )
    )



def gemm_epilogue_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor], *bn_args, **bn_kwargs) -> Tensor:
    """BN(act(x @ weight.T + bias)) for rows x (M, K), weight (N, K): BN's features are
    the N columns, its batch the M rows. bn_args / bn_kwargs: normalized_activation's
    (bn_weight, bn_bias, running_mean, running_var; training, momentum, eps, activation)."""
    return normalized_activation(F.linear(x, weight, bias), *bn_args, **bn_kwargs)


def patch_conv_block_reference(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], *bn_args,
                               **bn_kwargs) -> Tensor:
    """BatchNorm2d(act(Conv2d(C, O, p, stride=p)(x))) for a (O, C, p, p) conv_weight:
    ConvMixer's stem, and with p = 1 its pointwise block Conv2d(h, h, 1) -> act -> BN.
    bn_args / bn_kwargs as gemm_epilogue_reference's."""
    h = F.conv2d(x, conv_weight, conv_bias, stride=conv_weight.shape[-1])
    return normalized_activation(h, *bn_args, **bn_kwargs)
