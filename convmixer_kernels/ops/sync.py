"""Synchronized BatchNorm statistics for the mixer block (docs/design.md, "Synchronized
statistics"), on torch.distributed: gloo on the CPU, NCCL on CUDA, any process group.

The kernels already split training into a statistics pass and an apply pass, and the
backward into a sum pass and apply passes; `SyncedTrain` runs those pieces of the chosen
backend (ops/backends: forward_stats, forward_eval as the apply pass, backward_sums,
backward_with_sums) with one small collective between them:

  forward   stats pass -> all_gather of (count, mean, M2) per channel, 3*C float64 per
            process -> Chan's merge in rank order on every process (so every process holds
            bitwise the same mean and variance) -> apply pass with the global statistics
  backward  sum pass -> all_reduce of (sum dy, sum dy*xhat), 2*C float64 -> the apply
            passes with those sums and the global count

No extra pass over the activation. The parameter gradients are those of the local
batch (DistributedDataParallel averages them, as with nn.SyncBatchNorm); the input
gradient is that of the loss summed over every process.

The unsynchronized op (ops/custom_ops.py) is untouched: the collectives
live in this autograd.Function, between kernel calls, so torch.compile and opcheck see
the same custom ops as before.
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ..conventions import acc_dtype, memory_format_of
from . import backends
from .custom_ops import grad_like, refuse_double_backward


def sync_group(sync: bool, process_group, training: bool):
    """The process group a call synchronizes over, or None for the unsynchronized block:
    sync requested, batch statistics of a training call, an initialized process group
    with more than one process (this one among them)."""
    if not (sync and training):
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    # -1 when this process is not in the group: nothing to synchronize with.
    if dist.get_world_size(group) <= 1:
        return None
    return group


def merge_statistics(stats: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Chan's merge of per-process (count, mean, M2) rows, stats [P, 3, C] float64, in
    rank order; returns (count, mean, M2) per channel. A process with an empty batch
    (count 0) adds nothing."""
    count, mean, m2 = stats[0].unbind(0)
    for other in stats[1:]:
        n_b, mean_b, m2_b = other.unbind(0)
        total = count + n_b
        frac = n_b / total.clamp(min=1)  # n_b / (n_a + n_b); 0 when both are empty
        delta = mean_b - mean
        mean = mean + delta * frac
        m2 = m2 + m2_b + delta * delta * count * frac
        count = total
    return count, mean, m2


class SyncedTrain(torch.autograd.Function):
    """(y, mean, biased var, global count) of a training call with statistics over the
    batches of every process of `group`; inputs as the custom ops of ops/custom_ops.py
    take them (x dense, BN vectors in the accumulation dtype)."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, eps: float, activation: str, backend: str, group):
        impl = backends.get_backend(backend)
        acc = acc_dtype(x.dtype)
        local = x.shape[0] * x.shape[2] * x.shape[3]
        channels = x.shape[1]
        if local > 0:
            mean, var = impl.forward_stats(x, weight, bias, activation)
        else:
            # A process with an empty batch still takes part in the collective.
            mean = var = torch.zeros(channels, dtype=acc, device=x.device)
        mine = torch.stack([torch.full_like(mean, local, dtype=torch.float64), mean.double(), var.double() * local])
        gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, mine, group=group)
        count, mean64, m2 = merge_statistics(torch.stack(gathered))
        total = int(count[0].item())
        if total <= 1:
            raise ValueError(
                f"mixer_block: batch statistics need more than one value per channel over all processes, "
                f"got {total} (this process: x of shape {tuple(x.shape)})"
            )
        mean = mean64.to(acc)
        var = (m2 / total).to(acc)
        y = impl.forward_eval(x, weight, bias, gamma, beta, mean, var, eps, activation) if local > 0 \
            else torch.empty_like(x)
        ctx.save_for_backward(x, weight, bias, gamma, mean, var)
        ctx.has = (bias is not None, gamma is not None, beta is not None)
        ctx.eps, ctx.activation, ctx.backend, ctx.group, ctx.total = eps, activation, backend, group, total
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var, total

    @staticmethod
    def backward(ctx, grad_y, unused_mean_grad, unused_var_grad, unused_count_grad):
        refuse_double_backward(grad_y)
        x, weight, bias, gamma, mean, var = ctx.saved_tensors
        has_bias, has_gamma, has_beta = ctx.has
        impl = backends.get_backend(ctx.backend)
        acc = acc_dtype(x.dtype)
        grad_y = grad_y.contiguous(memory_format=memory_format_of(x))
        local_bias = bias if has_bias else None
        if x.numel() > 0:
            sum_dy, sum_dy_xhat = impl.backward_sums(grad_y, x, weight, local_bias, mean, var, ctx.eps,
                                                     ctx.activation)
        else:
            sum_dy = sum_dy_xhat = torch.zeros(x.shape[1], dtype=acc, device=x.device)
        sums = torch.stack([sum_dy, sum_dy_xhat]).double()
        dist.all_reduce(sums, group=ctx.group)
        if x.numel() > 0:
            dx, dweight, dbias = impl.backward_with_sums(
                grad_y, x, weight, local_bias, gamma if has_gamma else None, mean, var, ctx.eps,
                sums[0].to(acc), sums[1].to(acc), ctx.total, ctx.activation)
        else:
            dx = torch.zeros_like(x)
            dweight = torch.zeros(weight.shape, dtype=acc, device=x.device)
            dbias = torch.zeros(x.shape[1], dtype=acc, device=x.device)
        # BatchNorm's own parameters get the gradient of the local batch, as nn.SyncBatchNorm's do.
        return (
            dx,
            grad_like(dweight, weight),
            dbias.to(bias.dtype) if has_bias else None,
            sum_dy_xhat if has_gamma else None,
            sum_dy if has_beta else None,
            None, None, None, None,
        )
