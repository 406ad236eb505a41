"""Tensor-core (tl.dot) kernels of the mixer block for channels_last float16 and
bfloat16 tensors: the depthwise convolution as banded matrix products, batched over
channels.

The math is banded_nchw.py's (see there): per kernel row i, the input row segments, SEG
columns, times the band T_i of each channel. Here a program owns BLOCK_C contiguous
channels of BLOCK_M rows of the flattened (image, row) axis and BLOCK_W columns, and each
product is a 3-D tl.dot, [BLOCK_C, BLOCK_M, SEG] x [BLOCK_C, SEG, BLOCK_W], the channel as
its batch axis. Loads run along the channels (contiguous in memory); the weights arrive
tap-major [k*k, C] in x's dtype, so a tap's BLOCK_C weights are contiguous too. A tile
whose accumulator is not finite is recomputed exactly on CUDA cores, as in banded_nchw.py.
"""

import triton
import triton.language as tl

from .activations import act_forward
from .block_math import chan_merge


@triton.jit
def _channels(ptr, cc, c_ok, HAS: tl.constexpr, DEFAULT: tl.constexpr):
    # A per-channel vector as [BLOCK_C, 1, 1], DEFAULT where absent.
    if HAS:
        v = tl.load(ptr + cc, mask=c_ok, other=DEFAULT).to(tl.float32)
    else:
        v = tl.full(cc.shape, DEFAULT, tl.float32)
    return v


@triton.jit
def _band(w_row, cc, c_ok, C, SEG: tl.constexpr, BLOCK_W: tl.constexpr, K: tl.constexpr):
    # Each channel's T_i, [BLOCK_C, SEG, BLOCK_W]: T_i[c, n, w] = w_row[(n - w) * C + c], zero
    # off the band.
    tap = tl.arange(0, SEG)[None, :, None] - tl.arange(0, BLOCK_W)[None, None, :]
    return tl.load(w_row + tap * C + cc, mask=(tap >= 0) & (tap < K) & c_ok, other=0.0)


@triton.jit
def _tile(N, C, H, W, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    # Program -> (channels [BLOCK_C, 1, 1], their mask, flattened rows g [1, BLOCK_M, 1],
    # rows h within the image, row mask, first column). Channel blocks fastest: the
    # neighbouring programs read the rest of the same pixels' channel runs.
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    tiles_w = tl.cdiv(W, BLOCK_W)
    cb = pid % n_cb
    rest = pid // n_cb
    tw = rest % tiles_w
    g = (rest // tiles_w) * BLOCK_M + tl.arange(0, BLOCK_M)[None, :, None]
    cc = cb * BLOCK_C + tl.arange(0, BLOCK_C)[:, None, None]
    return cc, cc < C, g, g % H, g < N * H, tw * BLOCK_W


@triton.jit
def offsets(g, cols, cc, W, C):
    """Element offsets of flattened rows g, columns cols and channels cc (broadcast)."""
    return (g.to(tl.int64) * W + cols) * C + cc


@triton.jit
def segments(x_ptr, cc, c_ok, g, h, row_ok, col0, i, C, H, W, K: tl.constexpr, LEFT: tl.constexpr,
             BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """The input segments of kernel row i, [BLOCK_C, BLOCK_M, SEG]: x at flattened row
    g + i - LEFT (row h + i - LEFT of its image), column col0 - LEFT + s, zero outside the
    image, on rows not row_ok, and past the BLOCK_W + k - 1 columns a band reaches (a NaN
    further right must stay out)."""
    seg = tl.arange(0, SEG)[None, None, :]
    cols = col0 - LEFT + seg
    ok = (row_ok & (h + (i - LEFT) >= 0) & (h + (i - LEFT) < H) & c_ok & (cols >= 0) & (cols < W)
          & (seg < BLOCK_W + K - 1))
    row = x_ptr + (g + (i - LEFT)).to(tl.int64) * W * C + cc
    return tl.load(row + cols * C, mask=ok, other=0.0)


@triton.jit
def _conv_banded(x_ptr, w_ptr, cc, c_ok, g, h, row_ok, col0, C, H, W, K: tl.constexpr, LEFT: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    acc = tl.zeros([BLOCK_C, BLOCK_M, BLOCK_W], tl.float32)
    for i in range(K):
        a = segments(x_ptr, cc, c_ok, g, h, row_ok, col0, i, C, H, W, K, LEFT, BLOCK_W, SEG)
        acc = tl.dot(a, _band(w_ptr + i * K * C, cc, c_ok, C, SEG, BLOCK_W, K), acc)
    return acc


@triton.jit
def _conv_exact(x_ptr, w_ptr, cc, c_ok, g, h, row_ok, col0, C, H, W, K: tl.constexpr, LEFT: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    # The same convolution with one fp32 FMA per tap: only the taps of each window meet.
    acc = tl.zeros([BLOCK_C, BLOCK_M, BLOCK_W], tl.float32)
    for i in range(K):
        r_ok = row_ok & (h + (i - LEFT) >= 0) & (h + (i - LEFT) < H) & c_ok
        row = x_ptr + (g + (i - LEFT)).to(tl.int64) * W * C + cc
        for j in range(K):
            cols = col0 + (j - LEFT) + tl.arange(0, BLOCK_W)[None, None, :]
            xv = tl.load(row + cols * C, mask=r_ok & (cols >= 0) & (cols < W), other=0.0)
            wv = tl.load(w_ptr + (i * K + j) * C + cc, mask=c_ok, other=0.0)
            acc += wv.to(tl.float32) * xv.to(tl.float32)
    return acc


@triton.jit
def conv_tile(x_ptr, w_ptr, cc, c_ok, g, h, row_ok, col0, C, H, W, K: tl.constexpr, LEFT: tl.constexpr,
              BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """dwconv(x) on the tile in fp32 [BLOCK_C, BLOCK_M, BLOCK_W], on tensor cores, exact
    where that is not finite."""
    acc = _conv_banded(x_ptr, w_ptr, cc, c_ok, g, h, row_ok, col0, C, H, W, K, LEFT, BLOCK_C, BLOCK_M, BLOCK_W,
                       SEG)
    finite = (acc == acc) & (tl.abs(acc) < float("inf"))
    if tl.min(tl.min(tl.min(finite.to(tl.int32), 2), 1), 0) == 0:
        acc = _conv_exact(x_ptr, w_ptr, cc, c_ok, g, h, row_ok, col0, C, H, W, K, LEFT, BLOCK_C, BLOCK_M, BLOCK_W)
    return acc


@triton.jit
def forward_apply(x_ptr, w_ptr, bias_ptr, gamma_ptr, beta_ptr, mean_ptr, var_ptr, y_ptr, N, C, H, W, eps,
                  K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr,
                  HAS_BETA: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr,
                  SEG: tl.constexpr):
    """y = x + (act(dwconv(x) + b) - mean) * gamma * rsqrt(var + eps) + beta: the eval
    forward and the second training pass."""
    cc, c_ok, g, h, row_ok, col0 = _tile(N, C, H, W, BLOCK_C, BLOCK_M, BLOCK_W)
    acc = conv_tile(x_ptr, w_ptr, cc, c_ok, g, h, row_ok, col0, C, H, W, K, (K - 1) // 2, BLOCK_C, BLOCK_M,
                    BLOCK_W, SEG)
    hv = acc + _channels(bias_ptr, cc, c_ok, HAS_BIAS, 0.0)
    scale = _channels(gamma_ptr, cc, c_ok, HAS_GAMMA, 1.0) / tl.sqrt_rn(
        tl.load(var_ptr + cc, mask=c_ok, other=1.0) + eps)
    mean = tl.load(mean_ptr + cc, mask=c_ok, other=0.0)
    cols = col0 + tl.arange(0, BLOCK_W)[None, None, :]
    ok = row_ok & c_ok & (cols < W)
    offs = offsets(g, cols, cc, W, C)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    # (a - mean) * scale: no cancellation when |mean| is large next to the spread of a.
    y = x + (act_forward(hv, ACT) - mean) * scale + _channels(beta_ptr, cc, c_ok, HAS_BETA, 0.0)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def region_channels(C, H, n_bands, BAND_ROWS, pid, BLOCK_C: tl.constexpr):
    """Program pid's channels and region on a (region, channel block) grid, channel blocks
    fastest: (channels [BLOCK_C], the same as [BLOCK_C, 1, 1] and its mask, region, its
    image, first row, end row)."""
    n_cb = tl.cdiv(C, BLOCK_C)
    ch = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    region = pid // n_cb
    row0 = (region % n_bands) * BAND_ROWS
    cc = ch[:, None, None]
    return ch, cc, cc < C, region, region // n_bands, row0, tl.minimum(row0 + BAND_ROWS, H)


@triton.jit
def region_tile(t, row0, row_end, W, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    """Tile t of a region (a band of one image), row-major over its BLOCK_M x BLOCK_W
    tiles: (first row, rows h [1, BLOCK_M, 1], which of them are the region's, first
    column)."""
    tiles_w = tl.cdiv(W, BLOCK_W)
    r0 = row0 + (t // tiles_w) * BLOCK_M
    h = r0 + tl.arange(0, BLOCK_M)[None, :, None]
    return r0, h, h < row_end, (t % tiles_w) * BLOCK_W


@triton.jit
def region_h(t, x_ptr, w_ptr, bias, cc, c_ok, n, row0, row_end, C, H, W, K: tl.constexpr, BLOCK_C: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """Tile t of a region of image n: h = dwconv(x) + bias on it (conv_tile), its element
    offsets, which elements are the region's, its first row and first column."""
    r0, h, row_ok, col0 = region_tile(t, row0, row_end, W, BLOCK_M, BLOCK_W)
    acc = conv_tile(x_ptr, w_ptr, cc, c_ok, n * H + h, h, row_ok, col0, C, H, W, K, (K - 1) // 2, BLOCK_C, BLOCK_M,
                    BLOCK_W, SEG)
    cols = col0 + tl.arange(0, BLOCK_W)[None, None, :]
    return acc + bias, offsets(n * H + h, cols, cc, W, C), row_ok & c_ok & (cols < W), r0, col0


@triton.jit
def forward_stats(x_ptr, w_ptr, bias_ptr, part_mean_ptr, part_m2_ptr, C, H, W, n_bands, BAND_ROWS,
                  K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """First training pass on tensor cores: per region and channel the mean and M2 of
    a = act(h), with kernels_channels_last.forward_stats's program grid and partial layout
    (one program per region, a band of BAND_ROWS rows of one image, and channel block),
    each tile's (mean, M2) merged into the region's with Chan's formula."""
    ch, cc, c_ok, region, n, row0, row_end = region_channels(C, H, n_bands, BAND_ROWS, tl.program_id(0), BLOCK_C)
    bias = _channels(bias_ptr, cc, c_ok, HAS_BIAS, 0.0)
    count = 0.0
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tl.cdiv(W, BLOCK_W)):
        hv, _, ok, r0, col0 = region_h(t, x_ptr, w_ptr, bias, cc, c_ok, n, row0, row_end, C, H, W, K, BLOCK_C,
                                       BLOCK_M, BLOCK_W, SEG)
        a = tl.where(ok, act_forward(hv, ACT), 0.0)
        t_count = (tl.maximum(tl.minimum(row_end - r0, BLOCK_M), 0) * tl.minimum(W - col0, BLOCK_W)).to(tl.float32)
        t_mean = tl.sum(tl.sum(a, 2), 1) / tl.maximum(t_count, 1.0)
        dev = tl.where(ok, a - t_mean[:, None, None], 0.0)
        count, mean, m2 = chan_merge(count, mean, m2, t_count, t_mean, tl.sum(tl.sum(dev * dev, 2), 1))
    tl.store(part_mean_ptr + region * C + ch, mean, mask=ch < C)
    tl.store(part_m2_ptr + region * C + ch, m2, mask=ch < C)
