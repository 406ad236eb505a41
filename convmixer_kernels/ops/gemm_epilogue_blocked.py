"""The "blocked" backend of gemm_epilogue: torch's GEMM (MKL/oneDNN on a CPU, cuBLAS on a
GPU). In eval over blocks of rows, each block's epilogue (bias inside the GEMM,
activation, BN affine) run while the block is still in cache; in training one GEMM and a
BatchNorm over the activation's columns: on a CPU csrc/cpu/column_stats.h's (float sums
merged in double), on a GPU ATen's batch-norm kernels.

Why this and not one big GEMM followed by elementwise passes, or eager's three modules:
measured on this 2-core Sapphire Rapids (one thread, M = 8192 rows, 768 -> 768, GELU,
float32, eval): GEMM alone 58.6 ms, eager Conv2d(1x1) -> GELU -> BatchNorm2d in
channels_last 76.6 ms, full GEMM then GELU and BN affine in place over memory 67.7 ms, row
blocks of 1024 with the epilogue per block 64.6 ms (512: 66.9, 256: 68.5, 128: 78.0:
below ~1 MB per block the per-call overhead wins). So blocks of about 3 MB of output.

On a CPU in float32 the GEMM goes through oneDNN's matmul instead (`linear_onednn`), whole,
with the epilogue after it: `torch.mm` is MKL's sgemm, which on the 2-core AMD EPYC (Zen 4)
measured 1.3-1.4x slower than oneDNN's, the library eager's 1x1 convolutions already use
(2 threads, 8192 rows, 768 -> 768, bias, GELU, BN affine, eval, interleaved medians: MKL's
row blocks as above 82.7 ms, oneDNN's GEMM and the epilogue over the whole output 62.6 ms,
oneDNN in row blocks of 4096 65.4 ms; MKL's GEMM alone 80.1 ms). The activation stays
ATen's, as in eager's modules, so NaN and inf land where eager puts them.

Rows are the GEMM's M dimension: the (N, H, W) positions of a 1x1 conv, or the patches
of a stride-p patch conv; columns are the output channels, BatchNorm's features.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..conventions import acc_dtype
from ..reference import apply_activation as act

BLOCK_BYTES = 3 << 20
MIN_BLOCK_ROWS = 256
CENTER_ROWS = 128


def block_rows(x: Tensor, out_features: int) -> int:
    return max(MIN_BLOCK_ROWS, BLOCK_BYTES // max(1, out_features * x.element_size()))


def activation_(t: Tensor, activation: str) -> Tensor:
    """act(t) in place."""
    if activation == "relu":
        return t.relu_()
    if activation == "silu":
        return torch.nn.functional.silu(t, inplace=True)
    return torch.ops.aten.gelu_(t, approximate="tanh" if activation == "gelu_tanh" else "none")


def activation_backward(grad: Tensor, z: Tensor, activation: str) -> Tensor:
    """grad * act'(z), ATen's own derivative kernels (the ones eager's backward runs)."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(grad, z, 0.0)
    if activation == "silu":
        return torch.ops.aten.silu_backward(grad, z)
    return torch.ops.aten.gelu_backward(grad, z, approximate="tanh" if activation == "gelu_tanh" else "none")


def _gemm_block(x: Tensor, weight_t: Tensor, bias: Optional[Tensor], out: Tensor) -> Tensor:
    if bias is None:
        return torch.mm(x, weight_t, out=out)
    if x.dtype in (torch.float16, torch.bfloat16):
        # One rounding of x @ W.T + b, as eager's conv rounds it (two roundings doubled
        # the error of dx in a bfloat16 ReLU block).
        return torch.addmm(bias, x, weight_t, out=out)
    # float32/64: the bias added after the GEMM while the block is in cache; addmm(out=)
    # first copies the broadcast bias into out, one more pass (4% slower at 8192 x 768^2).
    torch.mm(x, weight_t, out=out)
    return out.add_(bias)


def _onednn(x: Tensor) -> bool:
    """Whether x @ W.T + b runs as oneDNN's matmul (see the module docstring): float32 on a
    CPU whose torch was built with oneDNN."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def linear_onednn(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x @ weight.T + bias by oneDNN's matmul, the bias added in its epilogue."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, "none", [], "")


def forward_eval(x: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Tensor, shift: Tensor,
                 activation: str) -> Tensor:
    """y = act(x @ weight.T + bias) * scale + shift (BN folded into scale and shift)."""
    if _onednn(x):
        y = activation_(linear_onednn(x, weight, bias), activation)
        return torch.addcmul(shift, y, scale, out=y)
    m, n = x.shape[0], weight.shape[0]
    y = x.new_empty((m, n))
    weight_t, scale, shift = weight.t(), scale.to(x.dtype), shift.to(x.dtype)
    rows = block_rows(x, n)
    for r in range(0, m, rows):
        block = _gemm_block(x[r:r + rows], weight_t, bias, y[r:r + rows])
        activation_(block, activation)
        torch.addcmul(shift, block, scale, out=block)
    return y


def _columns_in_double(x: Tensor) -> bool:
    """Whether the BatchNorm over the columns runs in csrc/cpu/column_stats.h (chunked float
    sums merged in double) rather than in ATen's batch-norm kernels: on a CPU whose build
    has the kernel ops. ATen's float32 statistics over a (rows, C) matrix are the
    channels_last kernel's, 20-100x less accurate than its NCHW ones (1.6e-6 against 5.6e-8
    relative error of the mean at 8192 x 256), and the error compounds through an optimizer
    (examples/train_digits.py). On a GPU ATen's Welford kernels are kept."""
    return x.device.type == "cpu" and hasattr(torch.ops.convmixer_kernels, "_kernel_column_moments")


def forward_train(x: Tensor, weight: Tensor, bias: Optional[Tensor], gamma: Optional[Tensor],
                  beta: Optional[Tensor], eps: float, activation: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, z, mean, var): z = x @ weight.T + bias (kept for backward), the batch mean and
    biased variance of act(z) per column, and y = BN(act(z)).

    On a GPU the statistics and the normalization are ATen's batch-norm kernel over act(z):
    it measured 4x faster here than per-block torch reductions (torch.var_mean over rows
    took 16% of a small ConvMixer's training step, eager's whole BatchNorm 4%)."""
    z = (linear_onednn(x, weight, bias) if _onednn(x)
         else _gemm_block(x, weight.t(), bias, x.new_empty((x.shape[0], weight.shape[0]))))
    a = act(z, activation)
    acc = acc_dtype(x.dtype)
    if not _columns_in_double(x):
        y, mean, invstd = torch.ops.aten.native_batch_norm(a, gamma, beta, None, None, True, 0.0, eps)
        return y, z, mean.to(acc), invstd.to(acc).pow(-2) - eps
    # Sums around the mean of the first rows: the variance comes from sums of squared
    # deviations, not a difference of large second moments (a single row as the center
    # measured 10x worse: it can sit 3 standard deviations off).
    center = a[:CENTER_ROWS].mean(0, dtype=torch.float64).to(acc)
    sum_d, sum_d2 = torch.ops.convmixer_kernels._kernel_column_moments(a, a, center, center)
    rows = a.shape[0]
    mean_d = sum_d / rows
    mean = (center.double() + mean_d).to(acc)
    var_d = (sum_d2 / rows - mean_d * mean_d).clamp_min(0)
    # y = (a - mean) * invstd * gamma + beta in acc_dtype, rounded once, as ATen's kernel.
    scale = torch.rsqrt(var_d + eps)
    scale = (scale if gamma is None else scale * gamma.double()).to(acc)
    shift = beta if beta is not None else torch.zeros_like(mean)
    y = torch.ops.convmixer_kernels._kernel_column_affine(a, mean, scale, shift, None, None)
    return y, z, mean, var_d.to(acc)


def affine(gamma, beta, mean, var, eps):
    """BN as y = a * scale + shift for the given statistics."""
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta
    return scale, shift


def backward(grad: Tensor, x: Tensor, weight: Tensor, z: Tensor, gamma: Optional[Tensor], mean: Tensor,
             var: Tensor, eps: float, batch_stats: bool, activation: str):
    """(dx, dweight, dbias, dgamma, dbeta): act(z) recomputed from z; BatchNorm's backward
    (dgamma = sum(dy * xhat), dbeta = sum(dy) and da, with or without the batch
    statistics' terms); dz = act'(z) * da; then two GEMMs, dx = dz @ W and dW = dz.T @ x,
    and dbias = sum(dz)."""
    a = act(z, activation)
    acc = acc_dtype(x.dtype)
    g = gamma if gamma is not None else torch.ones_like(mean)
    if _columns_in_double(x):
        da, dgamma, dbeta = _batch_norm_backward_columns(grad, a, g, mean, var, eps, batch_stats)
    else:
        stats = (None, None, mean, torch.rsqrt(var + eps)) if batch_stats else (mean, var, None, None)
        da, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(grad, a, g, *stats, batch_stats, eps,
                                                                      [True, True, True])
    dz = activation_backward(da, z, activation)
    return torch.mm(dz, weight), torch.mm(dz.t(), x), dz.sum(0, dtype=acc), dgamma.to(acc), dbeta.to(acc)


def _batch_norm_backward_columns(grad: Tensor, a: Tensor, gamma: Tensor, mean: Tensor, var: Tensor, eps: float,
                                 batch_stats: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(da, dgamma, dbeta) of y = (a - mean) * invstd * gamma + beta per column, with the
    sums in double (csrc/cpu/column_stats.h). With batch statistics
    da = gamma * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M), written as
    (a - mean) * k_a + k_0 + dy * k_dy with per-column coefficients."""
    kernels = torch.ops.convmixer_kernels
    sum_dy, sum_dy_centered = kernels._kernel_column_moments(grad, a, None, mean)
    invstd = torch.rsqrt(var.double() + eps)
    dbeta, dgamma = sum_dy, sum_dy_centered * invstd
    k_dy = gamma.double() * invstd
    acc = mean.dtype
    if not batch_stats:
        zeros = torch.zeros_like(mean)
        return kernels._kernel_column_affine(grad, zeros, k_dy.to(acc), zeros, None, None), dgamma, dbeta
    rows = a.shape[0]
    k_a = -k_dy * invstd * invstd * sum_dy_centered / rows
    k_0 = -k_dy * sum_dy / rows
    return kernels._kernel_column_affine(a, mean, k_a.to(acc), k_0.to(acc), grad, k_dy.to(acc)), dgamma, dbeta
