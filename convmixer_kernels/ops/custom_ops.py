"""The op's two layers of torch.library ops, each with its fake (meta) implementation.

- The custom ops that carry the mixer_block op, each taking the backend name (the public
  `mixer_block` of ops/mixer_block.py calls them; autograd is registered here):
    convmixer_kernels::mixer_block_eval      y                  (BN frozen at the running stats)
    convmixer_kernels::mixer_block_train     (y, mean, var)     (batch statistics)
    convmixer_kernels::mixer_block_backward  (dx, dw, db, dgamma, dbeta)
  They are functional (torch.library allows autograd only on ops that mutate nothing), so
  the in-place running-statistics update happens in `mixer_block` after the forward op,
  on C-length vectors.
- The kernel-level ops of the compiled extension (schemas in csrc/ops.cpp), which
  the cpu and cuda backends call: only their fakes are registered here, so they trace
  under torch.compile and pass opcheck on their own.
Both layers' outputs have the same shapes, from the same three fakes.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _extension
from ..conventions import acc_dtype, memory_format_of
from . import backends


def _fake_forward_eval(x):
    return torch.empty_like(x)


def _fake_forward_train(x):
    stats = x.new_empty((x.shape[1],), dtype=acc_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


def _fake_backward(x, weight):
    acc = acc_dtype(x.dtype)
    vec = x.new_empty((x.shape[1],), dtype=acc)
    return (
        torch.empty_like(x),
        weight.new_empty(weight.shape, dtype=acc),
        torch.empty_like(vec),
        torch.empty_like(vec),
        torch.empty_like(vec),
    )


@torch.library.custom_op("convmixer_kernels::mixer_block_eval", mutates_args=())
def _mixer_block_eval(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    activation: str,
    backend: str,
) -> Tensor:
    return backends.get_backend(backend).forward_eval(
        x, weight, bias, gamma, beta, running_mean, running_var, eps, activation
    )


@_mixer_block_eval.register_fake
def _(x, weight, bias, gamma, beta, running_mean, running_var, eps, activation, backend):
    return _fake_forward_eval(x)


@torch.library.custom_op("convmixer_kernels::mixer_block_train", mutates_args=())
def _mixer_block_train(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    eps: float,
    activation: str,
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor]:
    return tuple(
        backends.get_backend(backend).forward_train(x, weight, bias, gamma, beta, eps, activation)
    )


@_mixer_block_train.register_fake
def _(x, weight, bias, gamma, beta, eps, activation, backend):
    return _fake_forward_train(x)


@torch.library.custom_op("convmixer_kernels::mixer_block_backward", mutates_args=())
def _mixer_block_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    mean: Tensor,
    var: Tensor,
    eps: float,
    batch_stats: bool,
    activation: str,
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(
        backends.get_backend(backend).backward(
            grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, activation
        )
    )


@_mixer_block_backward.register_fake
def _(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, activation, backend):
    return _fake_backward(x, weight)


def grad_like(grad: Tensor, weight: Tensor) -> Tensor:
    """The conv-weight gradient in the weight's dtype and strides. The kernels take a
    contiguous weight; a channels_last model's (C, 1, k, k) weight is contiguous too but
    with another stride on the size-1 dimension, and DistributedDataParallel's gradient
    buckets compare strides literally (a warning, and a slower copy, on every step)."""
    grad = grad.to(weight.dtype)
    return grad if grad.stride() == weight.stride() else grad.as_strided(weight.shape, weight.stride())


def refuse_double_backward(grad_y: Tensor) -> None:
    """The kernels' backward is not itself differentiable: refuse create_graph=True (or
    torch.autograd.grad(..., create_graph=True)) at the first backward, instead of
    returning gradients that would silently lack their own graph."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(
            "mixer_block: double backward (create_graph=True) is not supported: the fused kernels' backward "
            "is not differentiable (on every backend, eager included). For higher-order gradients run the "
            "plain eager block: unswap_mixer_blocks(model), or reference.mixer_block_reference"
        )


def _backward(ctx, grad_y, *unused_stat_grads):
    refuse_double_backward(grad_y)
    x, weight, bias, gamma, mean, var = ctx.saved_tensors
    bias = bias if ctx.has_bias else None
    gamma = gamma if ctx.has_gamma else None
    # The incoming gradient may have any strides (expanded, permuted); the kernels read
    # it with x's layout.
    grad_y = grad_y.contiguous(memory_format=memory_format_of(x))
    dx, dw, db, dgamma, dbeta = torch.ops.convmixer_kernels.mixer_block_backward(
        grad_y, x, weight, bias, gamma, mean, var, ctx.eps, ctx.batch_stats, ctx.activation, ctx.backend
    )
    grads = [
        dx,
        grad_like(dw, weight),
        db.to(bias.dtype) if bias is not None else None,
        dgamma.to(ctx.gamma_dtype) if ctx.has_gamma else None,
        dbeta.to(ctx.beta_dtype) if ctx.has_beta else None,
    ]
    return grads


def _save_common(ctx, x, weight, bias, gamma, beta, eps, activation, backend):
    ctx.has_bias = bias is not None
    ctx.has_gamma = gamma is not None
    ctx.has_beta = beta is not None
    ctx.gamma_dtype = gamma.dtype if gamma is not None else None
    ctx.beta_dtype = beta.dtype if beta is not None else None
    ctx.eps = eps
    ctx.activation = activation
    ctx.backend = backend


def _setup_eval(ctx, inputs, output):
    x, weight, bias, gamma, beta, running_mean, running_var, eps, activation, backend = inputs
    _save_common(ctx, x, weight, bias, gamma, beta, eps, activation, backend)
    ctx.batch_stats = False
    ctx.save_for_backward(x, weight, bias, gamma, running_mean, running_var)


def _backward_eval(ctx, grad_y):
    return (*_backward(ctx, grad_y), None, None, None, None, None)


def _setup_train(ctx, inputs, output):
    x, weight, bias, gamma, beta, eps, activation, backend = inputs
    _, mean, var = output
    _save_common(ctx, x, weight, bias, gamma, beta, eps, activation, backend)
    ctx.batch_stats = True
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, weight, bias, gamma, mean, var)


def _backward_train(ctx, grad_y, grad_mean, grad_var):
    return (*_backward(ctx, grad_y), None, None, None)


_mixer_block_eval.register_autograd(_backward_eval, setup_context=_setup_eval)
_mixer_block_train.register_autograd(_backward_train, setup_context=_setup_train)


def register_kernel_fakes() -> None:
    """Fakes of the compiled kernel ops, where the extension loaded."""
    if _extension.load() is None:
        return

    @torch.library.register_fake("convmixer_kernels::_kernel_forward_eval")
    def _(x, weight, bias, gamma, beta, running_mean, running_var, eps, activation):
        return _fake_forward_eval(x)

    @torch.library.register_fake("convmixer_kernels::_kernel_forward_train")
    def _(x, weight, bias, gamma, beta, eps, activation):
        return _fake_forward_train(x)

    @torch.library.register_fake("convmixer_kernels::_kernel_backward")
    def _(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, activation):
        return _fake_backward(x, weight)

    @torch.library.register_fake("convmixer_kernels::_kernel_column_moments")
    def _(u, v, u_center, v_center):
        return u.new_empty((u.shape[1],), dtype=torch.float64), u.new_empty((u.shape[1],), dtype=torch.float64)

    @torch.library.register_fake("convmixer_kernels::_kernel_column_affine")
    def _(v, v_center, v_scale, shift, u, u_scale):
        return torch.empty_like(v, memory_format=torch.contiguous_format)
