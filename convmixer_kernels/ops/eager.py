"""The `eager` backend: the three passes written with stock PyTorch ops on top of
reference.py. It runs anywhere and is the fallback where no fused backend exists; its
backward differentiates the reference with autograd."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..reference import activation, depthwise_conv_same


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


def backward(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, act_name):
    acc = _acc(x)
    with torch.enable_grad():
        x_ = x.detach().requires_grad_()
        w_ = weight.detach().requires_grad_()
        b_ = (bias if bias is not None else torch.zeros(x.shape[1], dtype=x.dtype, device=x.device))
        b_ = b_.detach().requires_grad_()
        g_ = (gamma if gamma is not None else torch.ones_like(mean)).detach().requires_grad_()
        beta_ = torch.zeros_like(mean, requires_grad=True)
        a = _act(x_, w_, b_, act_name)
        if batch_stats:
            mean, var = _batch_stats(a)
        y = x_ + _normalize(a, mean, var, eps, g_, beta_).to(x.dtype)
        dx, dw, db, dg, dbeta = torch.autograd.grad(y, (x_, w_, b_, g_, beta_), grad_out)
    return dx, dw.to(acc), db.to(acc), dg, dbeta


def why_unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    return None
