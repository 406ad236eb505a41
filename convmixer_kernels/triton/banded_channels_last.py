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
