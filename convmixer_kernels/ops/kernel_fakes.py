"""Fake (meta) implementations of the C++ kernel ops in torch.ops.convmixer_kernels
(csrc/mixer_block.cpp), so they trace under torch.compile and pass opcheck on their own."""

import torch

from .. import _extension


def _acc(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def register() -> None:
    if _extension.load() is None:
        return

    @torch.library.register_fake("convmixer_kernels::fused_forward_eval")
    def _(x, weight, bias, gamma, beta, running_mean, running_var, eps, activation):
        return torch.empty_like(x)

    @torch.library.register_fake("convmixer_kernels::fused_forward_train")
    def _(x, weight, bias, gamma, beta, eps, activation):
        stats = x.new_empty((x.shape[1],), dtype=_acc(x))
        return torch.empty_like(x), stats, torch.empty_like(stats)

    @torch.library.register_fake("convmixer_kernels::fused_backward")
    def _(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, activation):
        vec = x.new_empty((x.shape[1],), dtype=_acc(x))
        return (
            torch.empty_like(x),
            weight.new_empty(weight.shape, dtype=_acc(x)),
            torch.empty_like(vec),
            torch.empty_like(vec),
            torch.empty_like(vec),
        )
