"""Tensor-core (tl.dot) kernels of the mixer block's backward for contiguous NCHW float16
and bfloat16 tensors, on banded_nchw.py's tiles and products (see there).

  pass 1 (backward_stats), pass 2 (backward_dh): h = dwconv(x) + b recomputed by
      banded_nchw.conv_tile, then kernels_nchw's per-element math (block_math.py), on the
      program grid and partial layout of kernels_nchw's. Pass 2 writes dh in x's dtype:
      it is a tl.dot operand of passes 3a and 3b (eager's conv backward takes dh in x's
      dtype too).
  pass 3a (backward_dx): dx = dy + conv_transpose(dh), conv_tile on dh with the flipped
      taps and the mirrored padding: the same band product.
  pass 3b (backward_dw): dW[i, j] = sum_{r, w} dh[r, w] * x[r + i - left, w + j - left].
      Per kernel row i, the product of the dh tile transposed with the input segments of
      the same tile's rows shifted by i, [BLOCK_W, BLOCK_M] x [BLOCK_M, SEG]:
      P_i[w, s] = sum_r dh[r, w] * x[r + i - left, col0 - left + s], accumulated in fp32
      over the region's tiles (s is relative to each tile's first column), and
      dW[i, j] = sum_w P_i[w, w + j], the sums along P_i's diagonals, once per region and
      kernel row. Every entry of P_i is a sum of exact products, so no zero off the band
      meets the input; only the masked-off dh beside the plane's right edge can (0 * inf),
      and a region whose sums are not all finite is summed again exactly (_dw_row_exact).
"""

import triton
import triton.language as tl

from .banded_nchw import _tile, conv_tile, region_h, region_tile, segments
from .block_math import band_diagonals, batchnorm_backward_constants, dh_tile, dy_xhat_tile, store_dh_partials
from .kernels_nchw import _region, _scalar


@triton.jit
def backward_stats(x_ptr, w_ptr, bias_ptr, mean_ptr, var_ptr, dy_ptr, part_ptr, C, H, W, n_bands, BAND_ROWS, eps,
                   K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """Backward pass 1 (batch statistics): per region, sum(dy) and sum(dy * xhat) as
    part[region, 0 / 1, c]. Weights [C, k*k] in x's dtype."""
    region, c, plane_rows, row0, row_end = _region(C, n_bands, BAND_ROWS, H, tl.program_id(0))
    base = plane_rows * W
    w_c = w_ptr + c * (K * K)
    bias = _scalar(bias_ptr, c, HAS_BIAS, 0.0)
    mean = tl.load(mean_ptr + c)
    rstd = 1.0 / tl.sqrt_rn(tl.load(var_ptr + c) + eps)
    sum_dy = 0.0
    sum_dy_xhat = 0.0
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
        hv, offs, ok, _, _ = region_h(t, x_ptr, w_c, bias, base, row0, row_end, H, W, K, BLOCK_M, BLOCK_W, SEG)
        # Summed tile by tile: elementwise sums held across the loop made ptxas spill.
        dy, dy_xhat = dy_xhat_tile(hv, dy_ptr, offs, ok, mean, rstd, ACT)
        sum_dy += tl.sum(dy)
        sum_dy_xhat += tl.sum(dy_xhat)
    tl.store(part_ptr + (region * 2) * C + c, sum_dy)
    tl.store(part_ptr + (region * 2 + 1) * C + c, sum_dy_xhat)


@triton.jit
def backward_dh(x_ptr, w_ptr, bias_ptr, gamma_ptr, mean_ptr, var_ptr, dy_ptr, sum_dy_ptr, sum_dy_xhat_ptr, dh_ptr,
                part_ptr, C, H, W, n_bands, BAND_ROWS, eps, inv_count,
                K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr,
                BATCH_STATS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """Backward pass 2: dh = da * act'(h) into dh (x's dtype), da as in
    kernels_channels_last.backward_dh; partials sum(dh) (and with frozen BN sum(dy),
    sum(dy * xhat)) as part[region, v, c]."""
    region, c, plane_rows, row0, row_end = _region(C, n_bands, BAND_ROWS, H, tl.program_id(0))
    base = plane_rows * W
    w_c = w_ptr + c * (K * K)
    bias = _scalar(bias_ptr, c, HAS_BIAS, 0.0)
    mean, rstd, g_rstd, mean_dy, mean_dy_xhat = batchnorm_backward_constants(
        c, c < C, mean_ptr, var_ptr, gamma_ptr, sum_dy_ptr, sum_dy_xhat_ptr, eps, inv_count, HAS_GAMMA, BATCH_STATS)
    sum_dh = 0.0
    sum_dy = 0.0
    sum_dy_xhat = 0.0
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
        hv, offs, ok, _, _ = region_h(t, x_ptr, w_c, bias, base, row0, row_end, H, W, K, BLOCK_M, BLOCK_W, SEG)
        dh, dy, dy_xhat = dh_tile(hv, dy_ptr, dh_ptr, offs, ok, mean, rstd, g_rstd, mean_dy, mean_dy_xhat, ACT,
                                  BATCH_STATS)
        # Summed tile by tile, as in backward_stats.
        sum_dh += tl.sum(dh)
        if not BATCH_STATS:
            sum_dy += tl.sum(dy)
            sum_dy_xhat += tl.sum(dy_xhat)
    store_dh_partials(part_ptr, region, C, c, c < C, sum_dh, sum_dy, sum_dy_xhat, BATCH_STATS)


@triton.jit
def backward_dx(dh_ptr, wf_ptr, dy_ptr, dx_ptr, N, C, H, W,
                K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """Backward pass 3a, forward_apply's tiles: dx = dy + conv_transpose(dh), the
    convolution of dh with the flipped taps wf [C, k*k] (x's dtype) and the padding
    mirrored, left = k - 1 - (k - 1) // 2 (see kernels_channels_last.backward_dx)."""
    c, plane, h, row_ok, col0 = _tile(N, C, H, W, BLOCK_M, BLOCK_W)
    d = conv_tile(dh_ptr, wf_ptr + c * (K * K), plane, h, row_ok, col0, H, W, K, K - 1 - (K - 1) // 2, BLOCK_M,
                  BLOCK_W, SEG)
    cols = col0 + tl.arange(0, BLOCK_W)[None, :]
    ok = row_ok & (cols < W)
    offs = plane + h * W + cols
    dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(dx_ptr + offs, (dy + d).to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dw_row_exact(dh_ptr, x_ptr, part_ptr, base, region, c, i, row0, row_end, C, H, W, BAND_ROWS,
                  K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    # The region's taps of kernel row i with one fp32 FMA per product, tap by tap; x read
    # only where dh is the region's, so only the products of the sum meet.
    LEFT: tl.constexpr = (K - 1) // 2
    for j in range(K):
        acc = tl.zeros([BLOCK_M, BLOCK_W], tl.float32)
        for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
            _, h, row_ok, col0 = region_tile(t, row0, row_end, W, BLOCK_M, BLOCK_W)
            cols = col0 + tl.arange(0, BLOCK_W)[None, :]
            ok = row_ok & (cols < W)
            r = h + (i - LEFT)
            xc = cols + (j - LEFT)
            dh = tl.load(dh_ptr + base + h * W + cols, mask=ok, other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + base + r * W + xc, mask=ok & (r >= 0) & (r < H) & (xc >= 0) & (xc < W), other=0.0)
            acc += dh * xv.to(tl.float32)
        tl.store(part_ptr + (region * (K * K) + i * K + j) * C + c, tl.sum(acc))


@triton.jit
def backward_dw(dh_ptr, x_ptr, part_ptr, C, H, W, n_bands, BAND_ROWS,
                K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """Backward pass 3b: per region, part[region, i * k + j, c] = sum_p dh[p] *
    x[p + (i - left, j - left)], kernel row by kernel row as the diagonal sums of the
    row's product (module docstring). dh and x in x's dtype."""
    LEFT: tl.constexpr = (K - 1) // 2
    KP: tl.constexpr = triton.next_power_of_2(K)
    region, c, plane_rows, row0, row_end = _region(C, n_bands, BAND_ROWS, H, tl.program_id(0))
    base = plane_rows * W
    j = tl.arange(0, KP)
    finite = 1
    # Kernel rows outside, tiles inside: one product in registers at a time. The region's
    # dh and x (a band of one plane) stay in L1 for the k passes over them.
    for i in range(K):
        prod = tl.zeros([BLOCK_W, SEG], tl.float32)
        for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
            _, h, row_ok, col0 = region_tile(t, row0, row_end, W, BLOCK_M, BLOCK_W)
            cols = col0 + tl.arange(0, BLOCK_W)[None, :]
            dh_t = tl.trans(tl.load(dh_ptr + base + h * W + cols, mask=row_ok & (cols < W), other=0.0))
            prod = tl.dot(dh_t, segments(x_ptr, base, h, row_ok, col0, i, H, W, K, LEFT, BLOCK_W, SEG), prod)
        taps = tl.where(j < K, band_diagonals(prod, KP), 0.0)
        finite = finite & tl.min(((taps == taps) & (tl.abs(taps) < float("inf"))).to(tl.int32), 0)
        tl.store(part_ptr + (region * (K * K) + i * K + j) * C + c, taps, mask=j < K)
    # The exact sums replace all of the region's (a branch inside the row loop made ptxas
    # spill).
    if finite == 0:
        # Every thread's fast sums stored before the exact ones overwrite them.
        tl.debug_barrier()
        for i in range(K):
            _dw_row_exact(dh_ptr, x_ptr, part_ptr, base, region, c, i, row0, row_end, C, H, W, BAND_ROWS, K, BLOCK_M,
                          BLOCK_W)
