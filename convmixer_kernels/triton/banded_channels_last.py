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
def _conv_banded(x_ptr, w_ptr, cc, c_ok, g, h, row_ok, col0, C, H, W, K: tl.constexpr, LEFT: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    acc = tl.zeros([BLOCK_C, BLOCK_M, BLOCK_W], tl.float32)
    seg = tl.arange(0, SEG)[None, None, :]
    cols = col0 - LEFT + seg
    # Only the BLOCK_W + k - 1 columns the band reaches: a NaN further right must stay out.
    cols_ok = (cols >= 0) & (cols < W) & (seg < BLOCK_W + K - 1)
    for i in range(K):
        r_ok = row_ok & (h + (i - LEFT) >= 0) & (h + (i - LEFT) < H) & c_ok
        row = x_ptr + (g + (i - LEFT)).to(tl.int64) * W * C + cc
        a = tl.load(row + cols * C, mask=r_ok & cols_ok, other=0.0)
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
    offs = (g.to(tl.int64) * W + cols) * C + cc
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    # (a - mean) * scale: no cancellation when |mean| is large next to the spread of a.
    y = x + (act_forward(hv, ACT) - mean) * scale + _channels(beta_ptr, cc, c_ok, HAS_BETA, 0.0)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def forward_stats(x_ptr, w_ptr, bias_ptr, part_mean_ptr, part_m2_ptr, C, H, W, n_bands, BAND_ROWS,
                  K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, SEG: tl.constexpr):
    """First training pass on tensor cores: per region and channel the mean and M2 of
    a = act(h), with kernels_channels_last.forward_stats's program grid and partial layout
    (one program per region, a band of BAND_ROWS rows of one image, and channel block),
    each tile's (mean, M2) merged into the region's with Chan's formula."""
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    cc = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)[:, None, None]
    c_ok = cc < C
    region = pid // n_cb
    n = region // n_bands
    row0 = (region % n_bands) * BAND_ROWS
    row_end = tl.minimum(row0 + BAND_ROWS, H)
    bias = _channels(bias_ptr, cc, c_ok, HAS_BIAS, 0.0)
    count = 0.0
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    tiles_w = tl.cdiv(W, BLOCK_W)
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_M) * tiles_w):
        r0 = row0 + (t // tiles_w) * BLOCK_M
        col0 = (t % tiles_w) * BLOCK_W
        h = r0 + tl.arange(0, BLOCK_M)[None, :, None]
        row_ok = h < row_end
        acc = conv_tile(x_ptr, w_ptr, cc, c_ok, n * H + h, h, row_ok, col0, C, H, W, K, (K - 1) // 2, BLOCK_C,
                        BLOCK_M, BLOCK_W, SEG)
        ok = row_ok & c_ok & (col0 + tl.arange(0, BLOCK_W)[None, None, :] < W)
        a = tl.where(ok, act_forward(acc + bias, ACT), 0.0)
        t_count = (tl.maximum(tl.minimum(row_end - r0, BLOCK_M), 0) * tl.minimum(W - col0, BLOCK_W)).to(tl.float32)
        t_mean = tl.sum(tl.sum(a, 2), 1) / tl.maximum(t_count, 1.0)
        dev = tl.where(ok, a - t_mean[:, None, None], 0.0)
        count, mean, m2 = chan_merge(count, mean, m2, t_count, t_mean, tl.sum(tl.sum(dev * dev, 2), 1))
    ch = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(part_mean_ptr + region * C + ch, mean, mask=ch < C)
    tl.store(part_m2_ptr + region * C + ch, m2, mask=ch < C)
