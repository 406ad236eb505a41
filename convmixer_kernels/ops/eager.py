"""The `eager` backend: the three passes written with stock PyTorch ops on top of
reference.py. It runs anywhere and is the fallback where no fused backend exists; its
backward writes out the math of DESIGN.md's three passes with torch ops."""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reference import activation, depthwise_conv_same, same_padding


def _act(x, weight, bias, act_name):
    return activation(depthwise_conv_same(x, weight, bias), act_name).to(_acc(x))


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _normalize(a, mean, var, eps, gamma, beta):
    shape = (1, -1, 1, 1)
    out = (a - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if gamma is not None:
        out = out * gamma.view(shape)
    if beta is not None:
        out = out + beta.view(shape)
    return out


def forward_eval(x, weight, bias, gamma, beta, running_mean, running_var, eps, act_name):
    a = _act(x, weight, bias, act_name)
    return (x + _normalize(a, running_mean, running_var, eps, gamma, beta).to(x.dtype))


def _batch_stats(a: Tensor) -> Tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(a, dim=(0, 2, 3), correction=0)
    return mean, var


def forward_train(x, weight, bias, gamma, beta, eps, act_name):
    a = _act(x, weight, bias, act_name)
    mean, var = _batch_stats(a)
    y = x + _normalize(a, mean, var, eps, gamma, beta).to(x.dtype)
    return y, mean, var


def activation_grad(h: Tensor, act_name: str) -> Tensor:
    """d act / d h, written out: autograd is off inside a custom op's implementation."""
    if act_name == "relu":
        return (h > 0).to(h.dtype)
    if act_name == "silu":
        s = torch.sigmoid(h)
        return s * (1 + h * (1 - s))
    if act_name == "gelu":
        cdf = 0.5 * (1 + torch.erf(h * 0.5**0.5))
        pdf = torch.exp(-0.5 * h * h) * (2 * math.pi) ** -0.5
        return cdf + h * pdf
    if act_name == "gelu_tanh":
        c = (2 / math.pi) ** 0.5
        inner = c * (h + 0.044715 * h**3)
        t = torch.tanh(inner)
        return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * c * (1 + 3 * 0.044715 * h * h)
    raise ValueError(f"unknown activation {act_name!r}")


def backward(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, act_name):
    acc = _acc(x)
    xa, wa, dy = x.to(acc), weight.to(acc), grad_out.to(acc)
    ba = bias.to(acc) if bias is not None else None
    h = depthwise_conv_same(xa, wa, ba)
    shape = (1, -1, 1, 1)
    rstd = torch.rsqrt(var + eps)
    xhat = (activation(h, act_name) - mean.view(shape)) * rstd.view(shape)
    dbeta = dy.sum(dim=(0, 2, 3))
    dgamma = (dy * xhat).sum(dim=(0, 2, 3))
    scale = rstd if gamma is None else gamma * rstd
    if batch_stats:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        da = (dy - (dbeta / count).view(shape) - xhat * (dgamma / count).view(shape)) * scale.view(shape)
    else:
        da = dy * scale.view(shape)
    dh = da * activation_grad(h, act_name)
    before, after = same_padding(weight.shape[-1])
    padded = F.pad(xa, (before, after, before, after))
    dpadded, dw, db = torch.ops.aten.convolution_backward(
        dh, padded, wa, [x.shape[1]], [1, 1], [0, 0], [1, 1], False, [0, 0], x.shape[1], [True, True, True]
    )
    h_end, w_end = before + x.shape[2], before + x.shape[3]
    dx = (dy + dpadded[:, :, before:h_end, before:w_end]).to(x.dtype)
    return dx, dw, db, dgamma, dbeta


def why_unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    return None
