"""Tensor-core (tl.dot) kernels of the mixer block's backward for channels_last float16
and bfloat16 tensors: banded_backward_nchw.py's formulation (see there) on
banded_channels_last.py's tiles, BLOCK_C contiguous channels as the batch axis of 3-D
tl.dots.

  pass 1 (backward_stats), pass 2 (backward_dh): h recomputed by
      banded_channels_last.conv_tile; kernels_channels_last's grid and partial layout;
      dh written in x's dtype.
  pass 3a (backward_dx): dx = dy + conv_transpose(dh), conv_tile with the flipped taps
      (tap-major [k*k, C], x's dtype) and the mirrored padding.
  pass 3b (backward_dw): per kernel row i and channel, P_i = dh^T times the input
      segments shifted by i, [BLOCK_C, BLOCK_W, BLOCK_M] x [BLOCK_C, BLOCK_M, SEG],
      accumulated over the region's tiles; dW[c, i, j] = sum_w P_i[c, w, w + j] once per
      region and kernel row; a region whose sums are not all finite is summed again
      exactly.
"""

import triton
import triton.language as tl

from .banded_channels_last import _channels, _tile, conv_tile, offsets, region_channels, region_h, region_tile, segments
from .block_math import band_diagonals, batchnorm_backward_constants, dh_tile, dy_xhat_tile, store_dh_partials


@triton.jit
def backward_stats(x_ptr, w_ptr, bias_ptr, mean_ptr, var_ptr, dy_ptr, part_ptr, C, H, W, n_bands, BAND_ROWS, eps,
                   K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """Backward pass 1 (batch statistics): per region, sum(dy) and sum(dy * xhat) as
    part[region, 0 / 1, c]."""
    ch, cc, c_ok, region, n, row0, row_end = region_channels(C, H, n_bands, BAND_ROWS, tl.program_id(0), BLOCK_C)
    bias = _channels(bias_ptr, cc, c_ok, HAS_BIAS, 0.0)
    mean = tl.load(mean_ptr + cc, mask=c_ok, other=0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.load(var_ptr + cc, mask=c_ok, other=1.0) + eps)
    sum_dy = tl.zeros([BLOCK_C], tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_C], tl.float32)
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
        hv, offs, ok, _, _ = region_h(t, x_ptr, w_ptr, bias, cc, c_ok, n, row0, row_end, C, H, W, K, BLOCK_C, BLOCK_M,
                                      BLOCK_W, SEG)
        # Summed tile by tile, as banded_backward_nchw.backward_stats.
        dy, dy_xhat = dy_xhat_tile(hv, dy_ptr, offs, ok, mean, rstd, ACT)
        sum_dy += tl.sum(tl.sum(dy, 2), 1)
        sum_dy_xhat += tl.sum(tl.sum(dy_xhat, 2), 1)
    tl.store(part_ptr + (region * 2) * C + ch, sum_dy, mask=ch < C)
    tl.store(part_ptr + (region * 2 + 1) * C + ch, sum_dy_xhat, mask=ch < C)


@triton.jit
def backward_dh(x_ptr, w_ptr, bias_ptr, gamma_ptr, mean_ptr, var_ptr, dy_ptr, sum_dy_ptr, sum_dy_xhat_ptr, dh_ptr,
                part_ptr, C, H, W, n_bands, BAND_ROWS, eps, inv_count,
                K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr,
                BATCH_STATS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr,
                SEG: tl.constexpr):
    """Backward pass 2: dh = da * act'(h) into dh (x's dtype), da as in
    kernels_channels_last.backward_dh; partials sum(dh) (and with frozen BN sum(dy),
    sum(dy * xhat)) as part[region, v, c]."""
    ch, cc, c_ok, region, n, row0, row_end = region_channels(C, H, n_bands, BAND_ROWS, tl.program_id(0), BLOCK_C)
    bias = _channels(bias_ptr, cc, c_ok, HAS_BIAS, 0.0)
    mean, rstd, g_rstd, mean_dy, mean_dy_xhat = batchnorm_backward_constants(
        cc, c_ok, mean_ptr, var_ptr, gamma_ptr, sum_dy_ptr, sum_dy_xhat_ptr, eps, inv_count, HAS_GAMMA, BATCH_STATS)
    sum_dh = tl.zeros([BLOCK_C], tl.float32)
    sum_dy = tl.zeros([BLOCK_C], tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_C], tl.float32)
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
        hv, offs, ok, _, _ = region_h(t, x_ptr, w_ptr, bias, cc, c_ok, n, row0, row_end, C, H, W, K, BLOCK_C, BLOCK_M,
                                      BLOCK_W, SEG)
        dh, dy, dy_xhat = dh_tile(hv, dy_ptr, dh_ptr, offs, ok, mean, rstd, g_rstd, mean_dy, mean_dy_xhat, ACT,
                                  BATCH_STATS)
        # Summed tile by tile, as in backward_stats.
        sum_dh += tl.sum(tl.sum(dh, 2), 1)
        if not BATCH_STATS:
            sum_dy += tl.sum(tl.sum(dy, 2), 1)
            sum_dy_xhat += tl.sum(tl.sum(dy_xhat, 2), 1)
    store_dh_partials(part_ptr, region, C, ch, ch < C, sum_dh, sum_dy, sum_dy_xhat, BATCH_STATS)


@triton.jit
def backward_dx(dh_ptr, wf_ptr, dy_ptr, dx_ptr, N, C, H, W, K: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """Backward pass 3a, forward_apply's tiles: dx = dy + conv_transpose(dh), the
    convolution of dh with the flipped taps wf and the padding mirrored,
    left = k - 1 - (k - 1) // 2 (see kernels_channels_last.backward_dx)."""
    cc, c_ok, g, h, row_ok, col0 = _tile(N, C, H, W, BLOCK_C, BLOCK_M, BLOCK_W)
    d = conv_tile(dh_ptr, wf_ptr, cc, c_ok, g, h, row_ok, col0, C, H, W, K, K - 1 - (K - 1) // 2, BLOCK_C, BLOCK_M,
                  BLOCK_W, SEG)
    cols = col0 + tl.arange(0, BLOCK_W)[None, None, :]
    ok = row_ok & c_ok & (cols < W)
    offs = offsets(g, cols, cc, W, C)
    dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(dx_ptr + offs, (dy + d).to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dw_row_exact(dh_ptr, x_ptr, part_ptr, ch, cc, c_ok, region, n, i, row0, row_end, C, H, W, BAND_ROWS,
                  K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    # The region's taps of kernel row i with one fp32 FMA per product, tap by tap; x read
    # only where dh is the region's, so only the products of the sum meet.
    LEFT: tl.constexpr = (K - 1) // 2
    for j in range(K):
        acc = tl.zeros([BLOCK_C, BLOCK_M, BLOCK_W], tl.float32)
        for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
            _, h, row_ok, col0 = region_tile(t, row0, row_end, W, BLOCK_M, BLOCK_W)
            cols = col0 + tl.arange(0, BLOCK_W)[None, None, :]
            ok = row_ok & c_ok & (cols < W)
            r = h + (i - LEFT)
            xc = cols + (j - LEFT)
            dh = tl.load(dh_ptr + offsets(n * H + h, cols, cc, W, C), mask=ok, other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + offsets(n * H + r, xc, cc, W, C),
                         mask=ok & (r >= 0) & (r < H) & (xc >= 0) & (xc < W), other=0.0)
            acc += dh * xv.to(tl.float32)
        tl.store(part_ptr + (region * (K * K) + i * K + j) * C + ch, tl.sum(tl.sum(acc, 2), 1), mask=ch < C)


@triton.jit
def backward_dw(dh_ptr, x_ptr, part_ptr, C, H, W, n_bands, BAND_ROWS, K: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """Backward pass 3b: per region, part[region, i * k + j, c] = sum_p dh[p] *
    x[p + (i - left, j - left)], kernel row by kernel row as the diagonal sums of the
    row's products (module docstring), on the (region, channel block) grid of the other
    passes."""
    LEFT: tl.constexpr = (K - 1) // 2
    KP: tl.constexpr = triton.next_power_of_2(K)
    ch, cc, c_ok, region, n, row0, row_end = region_channels(C, H, n_bands, BAND_ROWS, tl.program_id(0), BLOCK_C)
    j = tl.arange(0, KP)[None, :]
    finite = 1
    # Kernel rows outside, tiles inside, exact sums after: see banded_backward_nchw.backward_dw.
    for i in range(K):
        prod = tl.zeros([BLOCK_C, BLOCK_W, SEG], tl.float32)
        for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
            _, h, row_ok, col0 = region_tile(t, row0, row_end, W, BLOCK_M, BLOCK_W)
            cols = col0 + tl.arange(0, BLOCK_W)[None, None, :]
            dh = tl.load(dh_ptr + offsets(n * H + h, cols, cc, W, C), mask=row_ok & c_ok & (cols < W), other=0.0)
            a = segments(x_ptr, cc, c_ok, n * H + h, h, row_ok, col0, i, C, H, W, K, LEFT, BLOCK_W, SEG)
            prod = tl.dot(tl.permute(dh, (0, 2, 1)), a, prod)
        taps = tl.where(j < K, band_diagonals(prod, KP), 0.0)
        finite = finite & tl.min(tl.min(((taps == taps) & (tl.abs(taps) < float("inf"))).to(tl.int32), 1), 0)
        tl.store(part_ptr + (region * (K * K) + i * K + j) * C + ch[:, None], taps, mask=(ch[:, None] < C) & (j < K))
    if finite == 0:
        # Every thread's fast sums stored before the exact ones overwrite them.
        tl.debug_barrier()
        for i in range(K):
            _dw_row_exact(dh_ptr, x_ptr, part_ptr, ch, cc, c_ok, region, n, i, row0, row_end, C, H, W, BAND_ROWS, K,
                          BLOCK_C, BLOCK_M, BLOCK_W)
