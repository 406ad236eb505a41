"""The `eager` backend: the three passes (and synchronized BatchNorm's pieces of them,
ops/sync.py) written with stock PyTorch ops on top of reference.py. It runs anywhere and
is the fallback where no fused backend exists; its backward writes out the math of
docs/design.md's three passes with torch ops."""

import math
import sys
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...conventions import acc_dtype
from ...reference import apply_activation, depthwise_conv_same, same_padding
from .base import Backend


def _act(x, weight, bias, activation):
    return apply_activation(depthwise_conv_same(x, weight, bias), activation).to(acc_dtype(x.dtype))


def _normalize(a, mean, var, eps, gamma, beta):
    shape = (1, -1, 1, 1)
    out = (a - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if gamma is not None:
        out = out * gamma.view(shape)
    if beta is not None:
        out = out + beta.view(shape)
    return out


def forward_eval(x, weight, bias, gamma, beta, running_mean, running_var, eps, activation):
    a = _act(x, weight, bias, activation)
    return (x + _normalize(a, running_mean, running_var, eps, gamma, beta).to(x.dtype))


def _batch_stats(a: Tensor) -> Tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(a, dim=(0, 2, 3), correction=0)
    return mean, var


def forward_train(x, weight, bias, gamma, beta, eps, activation):
    a = _act(x, weight, bias, activation)
    mean, var = _batch_stats(a)
    y = x + _normalize(a, mean, var, eps, gamma, beta).to(x.dtype)
    return y, mean, var


def activation_grad(h: Tensor, activation: str) -> Tensor:
    """d act / d h, written out: autograd is off inside a custom op's implementation."""
    if activation == "relu":
        return (h > 0).to(h.dtype)
    if activation == "silu":
        s = torch.sigmoid(h)
        return s * (1 + h * (1 - s))
    if activation == "gelu":
        cdf = 0.5 * (1 + torch.erf(h * 0.5**0.5))
        pdf = torch.exp(-0.5 * h * h) * (2 * math.pi) ** -0.5
        return cdf + h * pdf
    if activation == "gelu_tanh":
        c = (2 / math.pi) ** 0.5
        inner = c * (h + 0.044715 * h**3)
        t = torch.tanh(inner)
        return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * c * (1 + 3 * 0.044715 * h * h)
    raise ValueError(f"unknown activation {activation!r}")


_SHAPE = (1, -1, 1, 1)  # a per-channel vector against (N, C, H, W)


def _recompute(x, weight, bias, mean, var, eps, activation):
    """h = conv(x) + bias, xhat and rstd of the backward, in the accumulation dtype."""
    acc = acc_dtype(x.dtype)
    ba = bias.to(acc) if bias is not None else None
    h = depthwise_conv_same(x.to(acc), weight.to(acc), ba)
    rstd = torch.rsqrt(var + eps)
    xhat = (apply_activation(h, activation) - mean.view(_SHAPE)) * rstd.view(_SHAPE)
    return h, xhat, rstd



def _sums(dy, xhat):
    return dy.sum(dim=(0, 2, 3)), (dy * xhat).sum(dim=(0, 2, 3))


def _backward_apply(dy, x, weight, h, xhat, rstd, gamma, sums, count, activation):
    """(dx, dweight, dbias) from dL/dy; sums = (sum dy, sum dy * xhat) over `count` values
    per channel with batch statistics, None with frozen statistics."""
    acc = acc_dtype(x.dtype)
    scale = rstd if gamma is None else gamma * rstd
    if sums is not None:
        sum_dy, sum_dy_xhat = sums
        da = (dy - (sum_dy / count).view(_SHAPE) - xhat * (sum_dy_xhat / count).view(_SHAPE)) * scale.view(_SHAPE)
    else:
        da = dy * scale.view(_SHAPE)
    dh = da * activation_grad(h, activation)
    before, after = same_padding(weight.shape[-1])
    padded = F.pad(x.to(acc), (before, after, before, after))
    dpadded, dw, db = torch.ops.aten.convolution_backward(
        dh, padded, weight.to(acc), [x.shape[1]], [1, 1], [0, 0], [1, 1], False, [0, 0], x.shape[1],
        [True, True, True]
    )
    h_end, w_end = before + x.shape[2], before + x.shape[3]
    dx = (dy + dpadded[:, :, before:h_end, before:w_end]).to(x.dtype)
    return dx, dw, db


def backward(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, activation):
    dy = grad_out.to(acc_dtype(x.dtype))
    h, xhat, rstd = _recompute(x, weight, bias, mean, var, eps, activation)
    dbeta, dgamma = _sums(dy, xhat)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    dx, dw, db = _backward_apply(dy, x, weight, h, xhat, rstd, gamma, (dbeta, dgamma) if batch_stats else None,
                                 count, activation)
    return dx, dw, db, dgamma, dbeta


# The pieces synchronized BatchNorm runs with collectives between them (ops/sync.py).

def forward_stats(x, weight, bias, activation):
    return _batch_stats(_act(x, weight, bias, activation))


def backward_sums(grad_out, x, weight, bias, mean, var, eps, activation):
    _, xhat, _ = _recompute(x, weight, bias, mean, var, eps, activation)
    return _sums(grad_out.to(acc_dtype(x.dtype)), xhat)


def backward_with_sums(grad_out, x, weight, bias, gamma, mean, var, eps, sum_dy, sum_dy_xhat, count, activation):
    h, xhat, rstd = _recompute(x, weight, bias, mean, var, eps, activation)
    return _backward_apply(grad_out.to(acc_dtype(x.dtype)), x, weight, h, xhat, rstd, gamma, (sum_dy, sum_dy_xhat), count,
                           activation)


class EagerBackend(Backend):
    NAME = "eager"
    DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    def passes(self):
        return sys.modules[__name__]
