"""The public mixer_block op: input checks, autocast, the backend choice and the
running-statistics update around the custom ops of ops/custom_ops.py."""

import contextlib
import numbers
from typing import Optional

import torch
from torch import Tensor

from ..conventions import ACTIVATIONS, MAX_KERNEL_SIZE, acc_dtype, memory_format_of
from ..reference import mixer_block_reference
from . import auto_select, backends, custom_ops  # noqa: F401  custom_ops registers torch.ops.convmixer_kernels.mixer_block_*
from . import sync as sync_ops

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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
    x = x.contiguous(memory_format=memory_format_of(x))
    use_batch_stats = training or running_mean is None
    group = None if on_meta else sync_ops.sync_group(sync, process_group, training)
    if x.numel() == 0 and group is None and not on_meta:
        # Nothing to normalize: eager's own ops give the empty result (with zero
        # gradients for the parameters) and leave the running statistics alone.
        return mixer_block_reference(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                                     training=training, momentum=momentum, eps=eps,
                                     activation=activation).to(out_dtype)
    if on_meta:
        # The custom ops' fake implementations give the meta outputs, as eager does; no
        # backend runs, so none is chosen.
        name = "eager"
    else:
        problem = auto_select.Problem.of(x, conv_weight, use_batch_stats, activation) if backend == "auto" else None
        name = backends.resolve(backend, x.device, x.dtype, problem, synced=group is not None,
                                kernel_size=int(conv_weight.shape[-1]))
    acc = acc_dtype(x.dtype)
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
