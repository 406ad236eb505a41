"""The "triton" backend of gemm_epilogue (ops/gemm_epilogue.py): one Triton matmul,
z = x @ W.T + b accumulated in float32 over K, with the epilogue in its last pass while
the (BLOCK_M, BLOCK_N) tile is in registers:

  eval    y = act(z) * scale + shift, stored once
  train   z and a = act(z) stored, and per tile and column the partial (count, mean, M2)
          of a; the partials merge over the row tiles in tile order (deterministic,
          Chan's formula, on C-length vectors) and BN's affine then runs over a in
          place

The backward is the blocked backend's (GEMMs and elementwise passes in torch).
Tested under TRITON_INTERPRET=1 only; not yet timed on a GPU, so "auto" does not pick it.
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..conventions import ACTIVATION_CODES, acc_dtype
from .activations import act_forward

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32


@triton.jit
def _gemm_epilogue_kernel(x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, z_ptr, mean_ptr, m2_ptr,
                          M, N, K, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, TRAIN: tl.constexpr,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # eval: y only; TRAIN: z, a in y, and the tile's partial statistics.
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(w_ptr + rn[None, :] * K + kk[:, None], mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0)
        acc += tl.dot(a, b, input_precision="ieee")
    col = rn < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=col, other=0.0).to(tl.float32)[None, :]
    mask = (rm[:, None] < M) & col[None, :]
    offs = rm[:, None] * N + rn[None, :]
    if TRAIN:
        tl.store(z_ptr + offs, acc.to(z_ptr.dtype.element_ty), mask=mask)
    act = act_forward(acc, ACT)
    if TRAIN:
        tl.store(y_ptr + offs, act.to(y_ptr.dtype.element_ty), mask=mask)
        rows = tl.minimum(M - pid_m * BM, BM).to(tl.float32)
        valid = tl.where(mask, act, 0.0)
        mean = tl.sum(valid, axis=0) / rows
        dev = tl.where(mask, act - mean[None, :], 0.0)
        tl.store(mean_ptr + pid_m * N + rn, mean, mask=col)
        tl.store(m2_ptr + pid_m * N + rn, tl.sum(dev * dev, axis=0), mask=col)
    else:
        scale = tl.load(scale_ptr + rn, mask=col, other=0.0)
        shift = tl.load(shift_ptr + rn, mask=col, other=0.0)
        tl.store(y_ptr + offs, (act * scale[None, :] + shift[None, :]).to(y_ptr.dtype.element_ty), mask=mask)


def _launch(x, weight, bias, scale, shift, activation, train):
    m, k = x.shape
    n = weight.shape[0]
    y = x.new_empty((m, n))
    z = torch.empty_like(y) if train else y
    tiles_m = triton.cdiv(m, BLOCK_M)
    parts = torch.empty((tiles_m, n) if train else (1,), device=x.device, dtype=torch.float32)
    m2 = torch.empty_like(parts)
    dummy = parts
    _gemm_epilogue_kernel[(tiles_m, triton.cdiv(n, BLOCK_N))](
        x, weight, bias if bias is not None else dummy, scale if scale is not None else dummy,
        shift if shift is not None else dummy, y, z, parts, m2, m, n, k, ACT=ACTIVATION_CODES[activation],
        HAS_BIAS=bias is not None, TRAIN=train, BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K)
    return y, z, parts, m2


def forward_eval(x: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Tensor, shift: Tensor,
                 activation: str) -> Tensor:
    return _launch(x, weight, bias, scale.float().contiguous(), shift.float().contiguous(), activation, False)[0]


def forward_train(x, weight, bias, gamma, beta, eps, activation):
    from ..ops.gemm_epilogue_blocked import affine

    y, z, tile_mean, tile_m2 = _launch(x, weight, bias, None, None, activation, True)
    m = x.shape[0]
    counts = torch.full((tile_mean.shape[0], 1), float(BLOCK_M), device=x.device)
    counts[-1] = m - BLOCK_M * (tile_mean.shape[0] - 1)
    # Chan's merge of all tiles at once: the exact mean, M2 plus the between-tile term.
    mean = (tile_mean * counts).sum(0) / m
    var = (tile_m2.sum(0) + (counts * (tile_mean - mean) ** 2).sum(0)) / m
    acc = acc_dtype(x.dtype)
    mean, var = mean.to(acc), var.to(acc)
    scale, shift = affine(gamma, beta, mean, var, eps)
    torch.addcmul(shift.to(x.dtype), y, scale.to(x.dtype), out=y)
    return y, z, mean, var
