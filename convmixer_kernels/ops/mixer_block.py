"""The mixer_block op: input checks, backend choice, the torch.library custom ops with
their fake implementations and autograd, autocast and the running-statistics update.

Three custom ops carry the work, each taking the backend name as an argument:
  convmixer_kernels::mixer_block_eval      y                  (BN frozen at the running stats)
  convmixer_kernels::mixer_block_train     (y, mean, var)     (batch statistics)
  convmixer_kernels::mixer_block_backward  (dx, dw, db, dgamma, dbeta)
They are functional (torch.library allows autograd only on ops that mutate nothing), so
the in-place running-statistics update happens in `mixer_block` after the forward op,
on C-length vectors.
"""

import contextlib
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..reference import ACTIVATIONS, MAX_KERNEL_SIZE, mixer_block_reference
from . import auto_select, backends
from . import sync as sync_ops

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    return torch.empty_like(x)


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
    stats = x.new_empty((x.shape[1],), dtype=_acc_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


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
    acc = _acc_dtype(x.dtype)
    vec = x.new_empty((x.shape[1],), dtype=acc)
    return (
        torch.empty_like(x),
        weight.new_empty(weight.shape, dtype=acc),
        torch.empty_like(vec),
        torch.empty_like(vec),
        torch.empty_like(vec),
    )


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    # Neither dense layout (a slice, a permutation): copy into the one its strides are
    # closest to, so the output keeps the caller's layout as eager's conv does.
    return torch.channels_last if x.stride(1) < x.stride(3) else torch.contiguous_format


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
    grad_y = grad_y.contiguous(memory_format=_memory_format(x))
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


def _check_vector(t: Optional[Tensor], name: str, x: Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"mixer_block: {name} must be a Tensor or None, got {type(t).__name__}")
    if t.shape != (x.shape[1],):
        raise ValueError(f"mixer_block: {name} must have shape ({x.shape[1]},) for x with "
                         f"{x.shape[1]} channels, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"mixer_block: {name} is on {t.device} but x is on {x.device}")
    if not t.is_floating_point():
        raise TypeError(f"mixer_block: {name} must be a floating-point tensor, got {t.dtype}")


def _check_inputs(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                  momentum, eps, activation) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"mixer_block: x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"mixer_block: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"mixer_block: x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if not isinstance(conv_weight, Tensor) or conv_weight.dim() != 4:
        raise ValueError("mixer_block: conv_weight must be a 4-D tensor (C, 1, k, k), got "
                         f"{tuple(conv_weight.shape) if isinstance(conv_weight, Tensor) else conv_weight}")
    channels = x.shape[1]
    if conv_weight.shape[1] != 1 or conv_weight.shape[0] != channels:
        raise ValueError(
            f"mixer_block: conv_weight must be depthwise with shape ({channels}, 1, k, k) for x with "
            f"{channels} channels, got {tuple(conv_weight.shape)} (only groups == channels is a mixer block)"
        )
    k = conv_weight.shape[2]
    if conv_weight.shape[3] != k:
        raise ValueError(f"mixer_block: conv_weight must be square (C, 1, k, k), got {tuple(conv_weight.shape)}")
    if not 1 <= k <= MAX_KERNEL_SIZE:
        raise ValueError(f"mixer_block: kernel size must be in [1, {MAX_KERNEL_SIZE}], got {k}")
    if conv_weight.device != x.device:
        raise ValueError(f"mixer_block: conv_weight is on {conv_weight.device} but x is on {x.device}")
    if conv_weight.dtype != x.dtype:
        raise TypeError(f"mixer_block: conv_weight dtype {conv_weight.dtype} must equal x dtype {x.dtype} "
                        "(under autocast both are cast to the autocast dtype)")
    _check_vector(conv_bias, "conv_bias", x)
    if conv_bias is not None and conv_bias.dtype != x.dtype:
        raise TypeError(f"mixer_block: conv_bias dtype {conv_bias.dtype} must equal x dtype {x.dtype}")
    for t, name in ((bn_weight, "bn_weight"), (bn_bias, "bn_bias"),
                    (running_mean, "running_mean"), (running_var, "running_var")):
        _check_vector(t, name, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("mixer_block: running_mean and running_var must both be given or both be None")
    if activation not in ACTIVATIONS:
        raise ValueError(f"mixer_block: activation must be one of {ACTIVATIONS}, got {activation!r}")
    for value, name in ((eps, "eps"), (momentum, "momentum")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            # nn.BatchNorm2d's momentum=None (a cumulative average) is a rule of the module,
            # not of the op: FusedMixerBlock passes 1 / num_batches_tracked for it.
            hint = " (for BatchNorm's momentum=None pass 1 / num_batches_tracked)" if name == "momentum" else ""
            raise TypeError(f"mixer_block: {name} must be a float, got {value!r}{hint}")
    if not eps > 0:
        raise ValueError(f"mixer_block: eps must be positive, got {eps}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"mixer_block: momentum must be in [0, 1], got {momentum}")


def _update_running_stats(running_mean, running_var, mean, var, momentum, count):
    # As nn.BatchNorm2d: the running variance tracks the unbiased batch variance.
    with torch.no_grad():
        unbiased = var * (count / (count - 1))
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def mixer_block(
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
    backend: str = "auto",
    sync: bool = False,
    process_group=None,
) -> Tensor:
    """y = x + BatchNorm2d(act(Conv2d(C, C, k, groups=C, padding='same')(x))), fused.

    Equals the eager block to rounding (reference.mixer_block_reference). training=True,
    or running statistics None, normalizes with batch statistics; training=True with
    running statistics updates them in place (unbiased variance, `momentum`). Output
    dtype and memory format follow x. backend: "auto" (fastest available), "cuda",
    "triton", "cpu" or "eager"; see available_backends(device).

    sync=True with training=True: the batch statistics (and the backward's sums) are
    those of the batches of every process of `process_group` (None: the default group),
    as nn.SyncBatchNorm computes them; see ops/sync.py. Without an initialized process
    group, or with a group of one process, exactly the unsynchronized block.
    An empty batch gives an empty result and leaves the running statistics alone, as
    nn.BatchNorm2d does. Double backward (create_graph=True) raises.
    """
    out_dtype = x.dtype
    # Meta tensors (shapes only) have no autocast state, and torch raises when asked for it.
    on_meta = isinstance(x, Tensor) and x.device.type == "meta"
    if isinstance(x, Tensor) and not on_meta and torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64:
        # The eager block under autocast runs its conv on weights rounded to the autocast
        # dtype and sums the residual in x's dtype promoted with it. A float32 x keeps its
        # precision here (the residual stream stays exact; the conv sees the rounded
        # weights); any other x is cast to the autocast dtype as the conv would cast it.
        low = torch.get_autocast_dtype(x.device.type)
        compute = x.dtype if x.dtype == torch.float32 else low
        out_dtype = torch.promote_types(x.dtype, low)
        x = x.to(compute)
        conv_weight = conv_weight.to(low).to(compute)
        conv_bias = conv_bias.to(low).to(compute) if conv_bias is not None else None
    _check_inputs(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                  momentum, eps, activation)
    x = x.contiguous(memory_format=_memory_format(x))
    use_batch_stats = training or running_mean is None
    group = None if on_meta else sync_ops.sync_group(sync, process_group, training)
    if x.numel() == 0 and group is None and not on_meta:
        # Nothing to normalize: eager's own ops give the empty result (with zero
        # gradients for the parameters) and leave the running statistics alone.
        return mixer_block_reference(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                                     training=training, momentum=momentum, eps=eps,
                                     activation_fn=activation).to(out_dtype)
    if on_meta:
        # The custom ops' fake implementations give the meta outputs, as eager does; no
        # backend runs, so none is chosen.
        name = "eager"
    else:
        problem = auto_select.Problem.of(x, conv_weight, use_batch_stats, activation) if backend == "auto" else None
        name = backends.resolve(backend, x.device, x.dtype, problem, synced=group is not None)
    acc = _acc_dtype(x.dtype)
    weight = conv_weight.contiguous()
    vectors = [t.to(acc).contiguous() if t is not None else None for t in (bn_weight, bn_bias)]
    no_autocast = contextlib.nullcontext() if on_meta else torch.autocast(x.device.type, enabled=False)
    with no_autocast:
        if group is not None:
            # Statistics over every process: ops/sync.py runs the kernels' passes with
            # the collectives between them.
            y, mean, var, count = sync_ops.SyncedTrain.apply(
                x, weight, conv_bias, *vectors, eps, activation, name, group)
            if running_mean is not None:
                _update_running_stats(running_mean, running_var, mean, var, momentum, count)
        elif use_batch_stats:
            if x.shape[0] * x.shape[2] * x.shape[3] <= 1:
                raise ValueError(
                    f"mixer_block: batch statistics need more than one value per channel, got x of shape {tuple(x.shape)}"
                )
            y, mean, var = torch.ops.convmixer_kernels.mixer_block_train(
                x, weight, conv_bias, *vectors, eps, activation, name
            )
            if training and running_mean is not None:
                count = x.shape[0] * x.shape[2] * x.shape[3]
                _update_running_stats(running_mean, running_var, mean, var, momentum, count)
        else:
            y = torch.ops.convmixer_kernels.mixer_block_eval(
                x, weight, conv_bias, *vectors,
                running_mean.to(acc).contiguous(), running_var.to(acc).contiguous(),
                eps, activation, name,
            )
    return y.to(out_dtype)
