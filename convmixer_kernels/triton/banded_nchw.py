"""Tensor-core (tl.dot) kernels of the mixer block for contiguous NCHW float16 and
bfloat16 tensors: the depthwise convolution as banded matrix products.

For one channel and kernel row i, a row of BLOCK_W outputs is the input row segment of
BLOCK_W + k - 1 values times the banded Toeplitz matrix T_i[w + j, w] = W[i, j]
(DESIGN.md, "GPU roofline"). A program owns one channel and BLOCK_M rows of the
flattened (image, row) axis of that channel, so the rows of several small images stack
into one matrix product and the band, built per kernel row from the channel's k taps,
serves all of them. One product per kernel row, acc += A_i @ T_i, with A_i the rows'
input segments padded to SEG = next_power_of_2(BLOCK_W + k - 1) columns (tl.dot needs
powers of two >= 16), operands in the input dtype (the weights are already in it: the
op requires the weight dtype to equal x's), fp32 accumulation.

The band's zeros also multiply the inputs beside each output's window, so a NaN or inf
there would reach outputs that eager keeps finite. A tile whose accumulator comes out
non-finite is recomputed exactly on CUDA cores (`_conv_exact`), which puts NaN and inf
where eager does; on finite inputs that branch never runs.
"""

import triton
import triton.language as tl

from .activations import act_forward
from .block_math import chan_merge
from .kernels_nchw import _region, _scalar


@triton.jit
def _band(w_row, SEG: tl.constexpr, BLOCK_W: tl.constexpr, K: tl.constexpr):
    # T_i [SEG, BLOCK_W]: T_i[n, w] = w_row[n - w], zero off the band.
    tap = tl.arange(0, SEG)[:, None] - tl.arange(0, BLOCK_W)[None, :]
    return tl.load(w_row + tap, mask=(tap >= 0) & (tap < K), other=0.0)


@triton.jit
def _tile(N, C, H, W, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    # Program -> (channel, plane offsets [BLOCK_M, 1] of its rows, rows h, row mask,
    # first column). Column tiles fastest, then row blocks, channels slowest: the programs
    # of one channel run together and share its weights in cache.
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles_m = tl.cdiv(N * H, BLOCK_M)
    tw = pid % tiles_w
    rest = pid // tiles_w
    g = (rest % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    c = rest // tiles_m
    n = g // H
    return c, (n * C + c).to(tl.int64) * (H * W), g % H, g < N * H, tw * BLOCK_W


@triton.jit
def segments(x_ptr, plane, h, row_ok, col0, i, H, W, K: tl.constexpr, LEFT: tl.constexpr,
             BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """The input segments of kernel row i, [BLOCK_M, SEG]: x[h + i - LEFT, col0 - LEFT + s],
    zero outside the plane, on rows not row_ok, and past the BLOCK_W + k - 1 columns a
    band reaches (a NaN further right must stay out)."""
    seg = tl.arange(0, SEG)[None, :]
    cols = col0 - LEFT + seg
    r = h + (i - LEFT)
    ok = row_ok & (r >= 0) & (r < H) & (cols >= 0) & (cols < W) & (seg < BLOCK_W + K - 1)
    return tl.load(x_ptr + plane + r * W + cols, mask=ok, other=0.0)


@triton.jit
def _conv_banded(x_ptr, w_c, plane, h, row_ok, col0, H, W, K: tl.constexpr, LEFT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """dwconv(x) on the tile, fp32 [BLOCK_M, BLOCK_W]: per kernel row one product of the
    input segments with the band (module docstring)."""
    acc = tl.zeros([BLOCK_M, BLOCK_W], tl.float32)
    for i in range(K):
        a = segments(x_ptr, plane, h, row_ok, col0, i, H, W, K, LEFT, BLOCK_W, SEG)
        acc = tl.dot(a, _band(w_c + i * K, SEG, BLOCK_W, K), acc)
    return acc


@triton.jit
def _conv_exact(x_ptr, w_c, plane, h, row_ok, col0, H, W, K: tl.constexpr, LEFT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    # The same convolution with one fp32 FMA per tap: only the taps of each window meet.
    acc = tl.zeros([BLOCK_M, BLOCK_W], tl.float32)
    for i in range(K):
        r = h + (i - LEFT)
        r_ok = row_ok & (r >= 0) & (r < H)
        for j in range(K):
            cols = col0 + (j - LEFT) + tl.arange(0, BLOCK_W)[None, :]
            xv = tl.load(x_ptr + plane + r * W + cols, mask=r_ok & (cols >= 0) & (cols < W), other=0.0)
            acc += tl.load(w_c + i * K + j).to(tl.float32) * xv.to(tl.float32)
    return acc


@triton.jit
def conv_tile(x_ptr, w_c, plane, h, row_ok, col0, H, W, K: tl.constexpr, LEFT: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """dwconv(x) on the tile in fp32, on tensor cores, exact where that is not finite."""
    acc = _conv_banded(x_ptr, w_c, plane, h, row_ok, col0, H, W, K, LEFT, BLOCK_M, BLOCK_W, SEG)
    finite = (acc == acc) & (tl.abs(acc) < float("inf"))
    if tl.min(tl.min(finite.to(tl.int32), 1), 0) == 0:
        acc = _conv_exact(x_ptr, w_c, plane, h, row_ok, col0, H, W, K, LEFT, BLOCK_M, BLOCK_W)
    return acc


@triton.jit
def forward_apply(x_ptr, w_ptr, bias_ptr, gamma_ptr, beta_ptr, mean_ptr, var_ptr, y_ptr, N, C, H, W, eps,
                  K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr,
                  HAS_BETA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """y = x + (act(dwconv(x) + b) - mean) * gamma * rsqrt(var + eps) + beta: the eval
    forward and the second training pass. Weights [C, k*k] in x's dtype."""
    c, plane, h, row_ok, col0 = _tile(N, C, H, W, BLOCK_M, BLOCK_W)
    w_c = w_ptr + c * (K * K)
    acc = conv_tile(x_ptr, w_c, plane, h, row_ok, col0, H, W, K, (K - 1) // 2, BLOCK_M, BLOCK_W, SEG)
    hv = acc + _scalar(bias_ptr, c, HAS_BIAS, 0.0)
    scale = _scalar(gamma_ptr, c, HAS_GAMMA, 1.0) / tl.sqrt_rn(tl.load(var_ptr + c) + eps)
    cols = col0 + tl.arange(0, BLOCK_W)[None, :]
    ok = row_ok & (cols < W)
    offs = plane + h * W + cols
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    # (a - mean) * scale: no cancellation when |mean| is large next to the spread of a.
    y = x + (act_forward(hv, ACT) - tl.load(mean_ptr + c)) * scale + _scalar(beta_ptr, c, HAS_BETA, 0.0)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def region_tile(t, row0, row_end, W, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    """Tile t of a region (a band of one plane), row-major over its BLOCK_M x BLOCK_W
    tiles: (first row, rows h [BLOCK_M, 1], which of them are the region's, first column)."""
    tiles_w = tl.cdiv(W, BLOCK_W)
    r0 = row0 + (t // tiles_w) * BLOCK_M
    h = r0 + tl.arange(0, BLOCK_M)[:, None]
    return r0, h, h < row_end, (t % tiles_w) * BLOCK_W


@triton.jit
def region_h(t, x_ptr, w_c, bias, base, row0, row_end, H, W, K: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """Tile t of a region of the plane at base: h = dwconv(x) + bias on it (conv_tile), its
    element offsets, which elements are the region's, its first row and first column."""
    r0, h, row_ok, col0 = region_tile(t, row0, row_end, W, BLOCK_M, BLOCK_W)
    acc = conv_tile(x_ptr, w_c, base, h, row_ok, col0, H, W, K, (K - 1) // 2, BLOCK_M, BLOCK_W, SEG)
    cols = col0 + tl.arange(0, BLOCK_W)[None, :]
    return acc + bias, base + h * W + cols, row_ok & (cols < W), r0, col0


@triton.jit
def forward_stats(x_ptr, w_ptr, bias_ptr, part_mean_ptr, part_m2_ptr, C, H, W, n_bands, BAND_ROWS,
                  K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """First training pass on tensor cores: per (region, channel) the mean and M2 of
    a = act(h), with kernels_nchw.forward_stats's program grid and partial layout (one
    program per plane and band of BAND_ROWS rows, BLOCK_M rows of the band a tile), each
    tile's (mean, M2) merged into the region's with Chan's formula."""
    region, c, plane_rows, row0, row_end = _region(C, n_bands, BAND_ROWS, H, tl.program_id(0))
    base = plane_rows * W
    w_c = w_ptr + c * (K * K)
    bias = _scalar(bias_ptr, c, HAS_BIAS, 0.0)
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
        hv, _, ok, r0, col0 = region_h(t, x_ptr, w_c, bias, base, row0, row_end, H, W, K, BLOCK_M, BLOCK_W, SEG)
        a = tl.where(ok, act_forward(hv, ACT), 0.0)
        t_count = (tl.maximum(tl.minimum(row_end - r0, BLOCK_M), 0) * tl.minimum(W - col0, BLOCK_W)).to(tl.float32)
        t_mean = tl.sum(a) / tl.maximum(t_count, 1.0)
        dev = tl.where(ok, a - t_mean, 0.0)
        count, mean, m2 = chan_merge(count, mean, m2, t_count, t_mean, tl.sum(dev * dev))
    tl.store(part_mean_ptr + region * C + c, mean)
    tl.store(part_m2_ptr + region * C + c, m2)
