"""gemm_epilogue: BN(act(x @ W.T + b)) over rows, the op behind ConvMixer's pointwise
block (Conv2d(h, h, 1) -> act -> BatchNorm2d) and its stem (Conv2d(3, h, p, stride=p) ->
act -> BatchNorm2d), whose convolutions are GEMMs over positions or patches
(patch_conv_block does the reshape).

Three custom ops, functional as torch.library requires for autograd (the running
statistics are updated in `gemm_epilogue` after the forward, on C-length vectors):
  convmixer_kernels::gemm_epilogue_eval      y                 (BN frozen at the running stats)
  convmixer_kernels::gemm_epilogue_train     (y, z, mean, var) (batch statistics; z = x @ W.T + b)
  convmixer_kernels::gemm_epilogue_backward  (dx, dw, db, dgamma, dbeta)
Training keeps x and z for backward where eager keeps three activations (the conv's
input, the activation's input, BatchNorm's input); the backward recomputes act(z) and
the normalized activation from z and the statistics. The eval op keeps nothing and its
backward (frozen-BN fine-tuning) recomputes z with one more GEMM.

Backends: "blocked" (ops/gemm_epilogue_blocked.py: torch's GEMM over row blocks with the
epilogue in cache, or oneDNN's GEMM whole for CPU float32; any device) and "triton" (convmixer_kernels/triton/gemm_epilogue.py:
one Triton matmul with the epilogue in its last pass; CUDA). "auto" is "blocked" for now
on every device: the Triton kernel is tested under the interpreter only and has not been
timed on a GPU.
"""

import contextlib
import numbers
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..conventions import acc_dtype
from ..reference import ACTIVATIONS, gemm_epilogue_reference
from . import gemm_epilogue_blocked as blocked
from .custom_ops import refuse_double_backward
from .mixer_block import _update_running_stats

BACKENDS = ("blocked", "triton")


def _backend(name: str):
    if name == "blocked":
        return blocked
    if name == "triton":
        from ..triton import gemm_epilogue as triton_gemm
        return triton_gemm
    raise ValueError(f"gemm_epilogue: backend must be 'auto' or one of {BACKENDS}, got {name!r}")


def gemm_backend_for(mixer_backend: str) -> str:
    """The gemm_epilogue backend that goes with a mixer_block backend in one model
    (ConvMixer's and swap_mixer_blocks' `backend`): "triton" for "triton", else "auto"."""
    return "triton" if mixer_backend == "triton" else "auto"


def _resolve(name: str, x: Tensor) -> str:
    if name == "auto":
        return "blocked"
    if name == "triton" and x.device.type != "cuda" and not _triton_interpreted():
        raise RuntimeError(f"gemm_epilogue: backend 'triton' runs on cuda tensors (or under TRITON_INTERPRET=1), "
                           f"x is on {x.device}")
    if name == "triton" and x.dtype == torch.float64:
        raise TypeError("gemm_epilogue: backend 'triton' takes float32, float16 or bfloat16 x, got float64")
    _backend(name)
    return name


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@torch.library.custom_op("convmixer_kernels::gemm_epilogue_eval", mutates_args=())
def _gemm_epilogue_eval(x: Tensor, weight: Tensor, bias: Optional[Tensor], gamma: Optional[Tensor],
                        beta: Optional[Tensor], running_mean: Tensor, running_var: Tensor, eps: float,
                        activation: str, backend: str) -> Tensor:
    scale, shift = blocked.affine(gamma, beta, running_mean, running_var, eps)
    return _backend(backend).forward_eval(x, weight, bias, scale, shift, activation)


@_gemm_epilogue_eval.register_fake
def _(x, weight, bias, gamma, beta, running_mean, running_var, eps, activation, backend):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("convmixer_kernels::gemm_epilogue_train", mutates_args=())
def _gemm_epilogue_train(x: Tensor, weight: Tensor, bias: Optional[Tensor], gamma: Optional[Tensor],
                         beta: Optional[Tensor], eps: float, activation: str,
                         backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(_backend(backend).forward_train(x, weight, bias, gamma, beta, eps, activation))


@_gemm_epilogue_train.register_fake
def _(x, weight, bias, gamma, beta, eps, activation, backend):
    out = x.new_empty((x.shape[0], weight.shape[0]))
    stats = x.new_empty((weight.shape[0],), dtype=acc_dtype(x.dtype))
    return out, torch.empty_like(out), stats, torch.empty_like(stats)


@torch.library.custom_op("convmixer_kernels::gemm_epilogue_backward", mutates_args=())
def _gemm_epilogue_backward(grad: Tensor, x: Tensor, weight: Tensor, z: Tensor, gamma: Optional[Tensor],
                            mean: Tensor, var: Tensor, eps: float, batch_stats: bool, activation: str,
                            backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    # The backward is GEMMs plus elementwise passes on every backend: the blocked one.
    return tuple(blocked.backward(grad, x, weight, z, gamma, mean, var, eps, batch_stats, activation))


@_gemm_epilogue_backward.register_fake
def _(grad, x, weight, z, gamma, mean, var, eps, batch_stats, activation, backend):
    vec = x.new_empty((weight.shape[0],), dtype=acc_dtype(x.dtype))
    return (torch.empty_like(x), torch.empty_like(weight), torch.empty_like(vec), torch.empty_like(vec),
            torch.empty_like(vec))


def _save(ctx, x, weight, bias, gamma, beta, eps, activation, backend, batch_stats, z, mean, var):
    ctx.has_bias, ctx.has_gamma, ctx.has_beta = bias is not None, gamma is not None, beta is not None
    ctx.eps, ctx.batch_stats, ctx.activation, ctx.backend = eps, batch_stats, activation, backend
    ctx.save_for_backward(x, weight, bias, z, gamma, mean, var)


def _setup_train(ctx, inputs, output):
    x, weight, bias, gamma, beta, eps, activation, backend = inputs
    _, z, mean, var = output
    ctx.mark_non_differentiable(z, mean, var)
    _save(ctx, x, weight, bias, gamma, beta, eps, activation, backend, True, z, mean, var)


def _setup_eval(ctx, inputs, output):
    # Frozen BN (fine-tuning): z is recomputed in backward (one more GEMM), so inference
    # keeps nothing and this rare mode pays the GEMM.
    x, weight, bias, gamma, beta, running_mean, running_var, eps, activation, backend = inputs
    _save(ctx, x, weight, bias, gamma, beta, eps, activation, backend, False, None, running_mean, running_var)


def _backward(ctx, grad_y):
    refuse_double_backward(grad_y)
    x, weight, bias, z, gamma, mean, var = ctx.saved_tensors
    if z is None:
        z = torch.nn.functional.linear(x, weight, bias)
    dx, dw, db, dgamma, dbeta = torch.ops.convmixer_kernels.gemm_epilogue_backward(
        grad_y.contiguous(), x, weight, z, gamma if ctx.has_gamma else None, mean, var, ctx.eps,
        ctx.batch_stats, ctx.activation, ctx.backend)
    # gamma and beta reach the op in the accumulation dtype (autograd casts their
    # gradients back); the conv's bias has x's dtype.
    return (dx, dw, db.to(x.dtype) if ctx.has_bias else None, dgamma if ctx.has_gamma else None,
            dbeta if ctx.has_beta else None)


def _backward_train(ctx, grad_y, *unused):
    return (*_backward(ctx, grad_y), None, None, None)


def _backward_eval(ctx, grad_y):
    return (*_backward(ctx, grad_y), None, None, None, None, None)


_gemm_epilogue_train.register_autograd(_backward_train, setup_context=_setup_train)
_gemm_epilogue_eval.register_autograd(_backward_eval, setup_context=_setup_eval)


def _check(x, weight, bias, vectors, momentum, eps, activation):
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"gemm_epilogue: x must be a 2-D tensor (rows, in_features), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"gemm_epilogue: x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"gemm_epilogue: weight must be 2-D (out_features, {x.shape[1]}) for x with "
                         f"{x.shape[1]} features, got "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"gemm_epilogue: {name} must have x's dtype and device ({x.dtype}, {x.device}), "
                            f"got {t.dtype} on {t.device}")
    for t, name in ((bias, "bias"), *vectors):
        if t is None:
            continue
        if t.shape != (weight.shape[0],) or t.device != x.device or not t.is_floating_point():
            raise ValueError(f"gemm_epilogue: {name} must be a floating-point vector of shape "
                             f"({weight.shape[0]},) on {x.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    if (vectors[2][0] is None) != (vectors[3][0] is None):
        raise ValueError("gemm_epilogue: running_mean and running_var must both be given or both be None")
    if activation not in ACTIVATIONS:
        raise ValueError(f"gemm_epilogue: activation must be one of {ACTIVATIONS}, got {activation!r}")
    for value, name in ((eps, "eps"), (momentum, "momentum")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"gemm_epilogue: {name} must be a float, got {value!r}")
    if not eps > 0:
        raise ValueError(f"gemm_epilogue: eps must be positive, got {eps}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"gemm_epilogue: momentum must be in [0, 1], got {momentum}")


def gemm_epilogue(x: Tensor, weight: Tensor, bias: Optional[Tensor], bn_weight: Optional[Tensor],
                  bn_bias: Optional[Tensor], running_mean: Optional[Tensor], running_var: Optional[Tensor], *,
                  training: bool, momentum: float = 0.1, eps: float = 1e-5, activation: str = "gelu",
                  backend: str = "auto") -> Tensor:
    """BatchNorm(act(x @ weight.T + bias)) with rows as the batch and columns as BN's
    features, equal to reference.gemm_epilogue_reference to rounding. x: (M, K), weight:
    (N, K). BN rules as nn.BatchNorm2d's (see mixer_block): training=True, or no running
    statistics, normalizes with the biased batch variance and updates the running
    statistics in place (unbiased variance, `momentum`). Under autocast it computes in the
    autocast dtype, as eager's conv would; the output is (M, N) in that dtype."""
    if isinstance(x, Tensor) and x.device.type != "meta" and torch.is_autocast_enabled(x.device.type) \
            and x.dtype != torch.float64:
        low = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(low), weight.to(low)
        bias = bias.to(low) if bias is not None else None
    vectors = ((bn_weight, "bn_weight"), (bn_bias, "bn_bias"), (running_mean, "running_mean"),
               (running_var, "running_var"))
    _check(x, weight, bias, vectors, momentum, eps, activation)
    batch_stats = training or running_mean is None
    if batch_stats and x.shape[0] == 1:
        raise ValueError(f"gemm_epilogue: batch statistics need more than one row, got x of shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        # Nothing to normalize: eager's ops give the empty result and leave the running statistics alone.
        return gemm_epilogue_reference(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                       training=training, momentum=momentum, eps=eps, activation=activation)
    name = _resolve(backend, x)
    acc = acc_dtype(x.dtype)
    x, weight = x.contiguous(), weight.contiguous()
    gamma, beta = (t.to(acc).contiguous() if t is not None else None for t in (bn_weight, bn_bias))
    no_autocast = contextlib.nullcontext() if x.device.type == "meta" else torch.autocast(x.device.type,
                                                                                          enabled=False)
    with no_autocast:
        if batch_stats:
            y, _, mean, var = torch.ops.convmixer_kernels.gemm_epilogue_train(
                x, weight, bias, gamma, beta, eps, activation, name)
            if training and running_mean is not None:
                _update_running_stats(running_mean, running_var, mean, var, momentum, x.shape[0])
            return y
        return torch.ops.convmixer_kernels.gemm_epilogue_eval(
            x, weight, bias, gamma, beta, running_mean.to(acc).contiguous(), running_var.to(acc).contiguous(), eps,
            activation, name)


def patch_rows(x: Tensor, patch: int) -> Tensor:
    """(N, C, H, W) -> (N * H/p * W/p, C * p * p): the patches of a stride-p, p x p conv
    as GEMM rows in (n, h, w) order, columns in the conv weight's (c, i, j) order. Rows
    and columns past the last whole patch are dropped, as the conv drops them. For p = 1
    and a channels_last x this is a view."""
    n, c, h, w = x.shape
    hp, wp = h // patch, w // patch
    if patch == 1:
        return x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    x = x[:, :, :hp * patch, :wp * patch].reshape(n, c, hp, patch, wp, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n * hp * wp, c * patch * patch)


def patch_conv_block(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], bn_weight, bn_bias,
                     running_mean, running_var, *, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                     activation: str = "gelu", backend: str = "auto") -> Tensor:
    """BatchNorm2d(act(Conv2d(C, O, p, stride=p)(x))) for a (O, C, p, p) conv_weight: the
    stem (p = patch size) and, with p = 1, the pointwise block. The result is a
    channels_last (N, O, H/p, W/p) tensor (the GEMM's rows are positions), equal to
    eager's in value whatever x's layout."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"patch_conv_block: x must be 4-D (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(conv_weight, Tensor) or conv_weight.dim() != 4 or conv_weight.shape[2] != conv_weight.shape[3] \
            or conv_weight.shape[1] != x.shape[1]:
        raise ValueError(f"patch_conv_block: conv_weight must be (out_channels, {x.shape[1]}, p, p) for x with "
                         f"{x.shape[1]} channels, got "
                         f"{tuple(conv_weight.shape) if isinstance(conv_weight, Tensor) else conv_weight}")
    p = conv_weight.shape[2]
    n, _, h, w = x.shape
    if h < p or w < p:
        raise ValueError(f"patch_conv_block: x of size {h}x{w} is smaller than one {p}x{p} patch")
    y = gemm_epilogue(patch_rows(x, p), conv_weight.reshape(conv_weight.shape[0], -1), conv_bias, bn_weight,
                      bn_bias, running_mean, running_var, training=training, momentum=momentum, eps=eps,
                      activation=activation, backend=backend)
    return y.view(n, h // p, w // p, -1).permute(0, 3, 1, 2)
