"""Triton kernels of the mixer block for channels_last tensors (N, H, W, C in memory).

Every load and store is a run of BLOCK_C contiguous channels (vectorized over C).

Every convolution (h = dwconv(x) + b in the forward passes and backward passes 1-2, the
transposed one of pass 3a) works on a tile of BLOCK_H rows x BLOCK_W columns x BLOCK_C
channels held as a tuple of BLOCK_W column tensors [BLOCK_H, BLOCK_C] (register
blocking along W, _conv_cols; pass 3b, the weight gradient, likewise): for each kernel row
the BLOCK_W + k - 1 input columns are loaded and converted to float32 once and each
feeds up to k output columns from registers, so a kernel row costs BLOCK_W + k - 1 loads
instead of k * BLOCK_W. The halo is the only extra DRAM traffic; the k re-reads of an
input row (one per kernel row) hit L1. k is a compile-time constant; the kernel rows
run as a loop, the taps of a row unroll.

Kernels that reduce over (N, H, W) run one program per (region, channel block), where a
region is one band of BAND_ROWS rows of one image, chosen by the launcher independently
of the tile config; the program loops over the tiles of its region and writes one
partial per region and channel, so the partial layout and the order of the final
reduction (reductions.py) do not depend on which config the autotuner picked.

Weights arrive transposed to [k*k, C] float32, so the per-tap weight vector is a
contiguous load.
"""

import triton
import triton.language as tl

from .activations import act_forward
from .block_math import batchnorm_backward_constants, chan_merge, dh_tile, dy_xhat_tile, store_dh_partials


@triton.jit
def _channel_vector(ptr, cc, c_ok, HAS: tl.constexpr, DEFAULT: tl.constexpr, BLOCK_C: tl.constexpr):
    if HAS:
        v = tl.load(ptr + cc, mask=c_ok, other=DEFAULT).to(tl.float32)
    else:
        v = tl.full([BLOCK_C], DEFAULT, tl.float32)
    return v


@triton.jit
def _rows_in(rows, row_end, col, W):
    # rows < row_end where column col is inside the image, else all False. (The column
    # test folds into the row bound: the interpreter cannot AND a block mask with a
    # scalar one.)
    return (rows >= 0) & (rows < tl.where((col >= 0) & (col < W), row_end, 0))


@triton.jit
def _conv_cols(x_img, w_ptr, bias_ptr, oh, col0, cc, c_ok, H, W, C, K: tl.constexpr, LEFT: tl.constexpr,
               HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """h = dwconv(x) + bias, float32, at rows oh [BLOCK_H], columns col0 .. col0 +
    BLOCK_W - 1 and channels cc: a tuple of BLOCK_W [BLOCK_H, BLOCK_C] tensors.
    out[p] = sum_ij w[i, j] * x[p + (i - LEFT, j - LEFT)], zero outside the image
    (LEFT = (k - 1) // 2 is 'same' padding)."""
    bias = _channel_vector(bias_ptr, cc, c_ok, HAS_BIAS, 0.0, BLOCK_C)
    h = (tl.zeros([BLOCK_H, BLOCK_C], tl.float32) + bias[None, :],) * BLOCK_W
    for i in range(K):
        r = oh + (i - LEFT)
        row = x_img + (r * W * C)[:, None] + cc[None, :]
        xs = ()
        for q in tl.static_range(BLOCK_W + K - 1):
            col = col0 + (q - LEFT)
            ok = _rows_in(r, H, col, W)
            xs = xs + (tl.load(row + col * C, mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32),)
        for j in tl.static_range(K):
            wv = tl.load(w_ptr + (i * K + j) * C + cc, mask=c_ok, other=0.0)[None, :]
            for q in tl.static_range(BLOCK_W):
                h = h[:q] + (h[q] + wv * xs[q + j],) + h[q + 1:]
    return h


@triton.jit
def _column_offsets(img, oh, col, cc, W, C):
    return img + ((oh * W + col) * C)[:, None] + cc[None, :]


@triton.jit
def _flat_tile(C, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    # One tile per program, channel blocks fastest (neighbouring programs read the same
    # pixels' channel runs): (image offset, rows, first column, channels, channel mask).
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles_h = tl.cdiv(H, BLOCK_H)
    cb = pid % n_cb
    rest = pid // n_cb
    tw = rest % tiles_w
    rest = rest // tiles_w
    th = rest % tiles_h
    n = rest // tiles_h
    cc = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    return (n.to(tl.int64) * (H * W * C), th * BLOCK_H + tl.arange(0, BLOCK_H), tw * BLOCK_W, cc, cc < C)


@triton.jit
def forward_apply(x_ptr, w_ptr, bias_ptr, gamma_ptr, beta_ptr, mean_ptr, var_ptr, y_ptr, C, H, W, eps,
                  K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr,
                  HAS_BETA: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = x + (act(dwconv(x) + b) - mean) * gamma * rsqrt(var + eps) + beta, one tile per
    program: the eval forward (running statistics) and the second training pass (batch
    statistics)."""
    img, oh, col0, cc, c_ok = _flat_tile(C, H, W, BLOCK_H, BLOCK_W, BLOCK_C)
    h = _conv_cols(x_ptr + img, w_ptr, bias_ptr, oh, col0, cc, c_ok, H, W, C, K, (K - 1) // 2, HAS_BIAS,
                   BLOCK_H, BLOCK_W, BLOCK_C)

    mean = tl.load(mean_ptr + cc, mask=c_ok, other=0.0)[None, :]
    var = tl.load(var_ptr + cc, mask=c_ok, other=1.0)
    scale = (_channel_vector(gamma_ptr, cc, c_ok, HAS_GAMMA, 1.0, BLOCK_C) / tl.sqrt_rn(var + eps))[None, :]
    shift = _channel_vector(beta_ptr, cc, c_ok, HAS_BETA, 0.0, BLOCK_C)[None, :]
    for q in tl.static_range(BLOCK_W):
        offs = _column_offsets(img, oh, col0 + q, cc, W, C)
        ok = _rows_in(oh, H, col0 + q, W)[:, None] & c_ok[None, :]
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        # (a - mean) * scale rather than a * scale + (beta - mean * scale): no
        # cancellation when |mean| is large next to the spread of a.
        y = x + (act_forward(h[q], ACT) - mean) * scale + shift
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _region(C, n_bands, BAND_ROWS, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    cb = pid % n_cb
    region = pid // n_cb
    n = region // n_bands
    row0 = (region % n_bands) * BAND_ROWS
    row_end = tl.minimum(row0 + BAND_ROWS, H)
    cc = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    n_tiles = tl.cdiv(BAND_ROWS, BLOCK_H) * tl.cdiv(W, BLOCK_W)
    return region, n.to(tl.int64) * (H * W * C), row0, row_end, cc, cc < C, n_tiles


@triton.jit
def _region_tile(t, row0, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # Tile t of a region, row-major over its BLOCK_H x BLOCK_W tiles: (first row, rows,
    # first column).
    tiles_w = tl.cdiv(W, BLOCK_W)
    r0 = row0 + (t // tiles_w) * BLOCK_H
    return r0, r0 + tl.arange(0, BLOCK_H), (t % tiles_w) * BLOCK_W


@triton.jit
def forward_stats(x_ptr, w_ptr, bias_ptr, part_mean_ptr, part_m2_ptr, C, H, W, n_bands, BAND_ROWS,
                  K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """First training pass: per region and channel, the mean and M2 (sum of squared
    deviations) of a = act(dwconv(x) + b). Each tile's own mean and M2 are merged into
    the region's with Chan's formula, so no sum of squares ever cancels."""
    region, img, row0, row_end, cc, c_ok, n_tiles = _region(C, n_bands, BAND_ROWS, H, W, BLOCK_H, BLOCK_W,
                                                            BLOCK_C)
    count = 0.0
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for t in range(n_tiles):
        r0, oh, col0 = _region_tile(t, row0, W, BLOCK_H, BLOCK_W)
        h = _conv_cols(x_ptr + img, w_ptr, bias_ptr, oh, col0, cc, c_ok, H, W, C, K, (K - 1) // 2, HAS_BIAS,
                       BLOCK_H, BLOCK_W, BLOCK_C)
        a = ()
        t_sum = tl.zeros([BLOCK_H, BLOCK_C], tl.float32)
        for q in tl.static_range(BLOCK_W):
            a = a + (tl.where(_rows_in(oh, row_end, col0 + q, W)[:, None], act_forward(h[q], ACT), 0.0),)
            t_sum += a[q]
        t_count = (tl.maximum(tl.minimum(row_end - r0, BLOCK_H), 0) * tl.minimum(W - col0, BLOCK_W)).to(tl.float32)
        t_mean = tl.sum(t_sum, axis=0) / tl.maximum(t_count, 1.0)
        t_m2 = tl.zeros([BLOCK_H, BLOCK_C], tl.float32)
        for q in tl.static_range(BLOCK_W):
            dev = tl.where(_rows_in(oh, row_end, col0 + q, W)[:, None], a[q] - t_mean[None, :], 0.0)
            t_m2 += dev * dev
        count, mean, m2 = chan_merge(count, mean, m2, t_count, t_mean, tl.sum(t_m2, axis=0))
    tl.store(part_mean_ptr + region * C + cc, mean, mask=c_ok)
    tl.store(part_m2_ptr + region * C + cc, m2, mask=c_ok)


@triton.jit
def backward_stats(x_ptr, w_ptr, bias_ptr, mean_ptr, var_ptr, dy_ptr, part_ptr, C, H, W, n_bands, BAND_ROWS, eps,
                   K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """Backward pass 1 (batch statistics): per region, sum(dy) and sum(dy * xhat),
    xhat = (a - mean) * rstd, written as part[region, 0 / 1, c]."""
    region, img, row0, row_end, cc, c_ok, n_tiles = _region(C, n_bands, BAND_ROWS, H, W, BLOCK_H, BLOCK_W,
                                                            BLOCK_C)
    mean = tl.load(mean_ptr + cc, mask=c_ok, other=0.0)[None, :]
    rstd = (1.0 / tl.sqrt_rn(tl.load(var_ptr + cc, mask=c_ok, other=1.0) + eps))[None, :]
    sum_dy = tl.zeros([BLOCK_H, BLOCK_C], tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_H, BLOCK_C], tl.float32)
    for t in range(n_tiles):
        _, oh, col0 = _region_tile(t, row0, W, BLOCK_H, BLOCK_W)
        h = _conv_cols(x_ptr + img, w_ptr, bias_ptr, oh, col0, cc, c_ok, H, W, C, K, (K - 1) // 2, HAS_BIAS,
                       BLOCK_H, BLOCK_W, BLOCK_C)
        for q in tl.static_range(BLOCK_W):
            ok = _rows_in(oh, row_end, col0 + q, W)[:, None] & c_ok[None, :]
            dy, dy_xhat = dy_xhat_tile(h[q], dy_ptr, _column_offsets(img, oh, col0 + q, cc, W, C), ok, mean, rstd, ACT)
            sum_dy += dy
            sum_dy_xhat += dy_xhat
    tl.store(part_ptr + (region * 2) * C + cc, tl.sum(sum_dy, axis=0), mask=c_ok)
    tl.store(part_ptr + (region * 2 + 1) * C + cc, tl.sum(sum_dy_xhat, axis=0), mask=c_ok)


@triton.jit
def backward_dh(x_ptr, w_ptr, bias_ptr, gamma_ptr, mean_ptr, var_ptr, dy_ptr, sum_dy_ptr, sum_dy_xhat_ptr, dh_ptr,
                part_ptr, C, H, W, n_bands, BAND_ROWS, eps, inv_count,
                K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr,
                BATCH_STATS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """Backward pass 2: dh = da * act'(h) into the float32 workspace dh, with
      batch statistics: da = gamma * rstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
                        (the sums from pass 1)
      frozen BN:        da = gamma * rstd * dy.
    Partials per region: sum(dh) for the conv bias, and with frozen BN also sum(dy) and
    sum(dy * xhat) (pass 1 is skipped there), as part[region, 0 / 1 / 2, c]."""
    region, img, row0, row_end, cc, c_ok, n_tiles = _region(C, n_bands, BAND_ROWS, H, W, BLOCK_H, BLOCK_W,
                                                            BLOCK_C)
    mean, rstd, g_rstd, mean_dy, mean_dy_xhat = batchnorm_backward_constants(
        cc[None, :], c_ok[None, :], mean_ptr, var_ptr, gamma_ptr, sum_dy_ptr, sum_dy_xhat_ptr, eps, inv_count,
        HAS_GAMMA, BATCH_STATS)
    sum_dh = tl.zeros([BLOCK_H, BLOCK_C], tl.float32)
    sum_dy = tl.zeros([BLOCK_H, BLOCK_C], tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_H, BLOCK_C], tl.float32)
    for t in range(n_tiles):
        _, oh, col0 = _region_tile(t, row0, W, BLOCK_H, BLOCK_W)
        h = _conv_cols(x_ptr + img, w_ptr, bias_ptr, oh, col0, cc, c_ok, H, W, C, K, (K - 1) // 2, HAS_BIAS,
                       BLOCK_H, BLOCK_W, BLOCK_C)
        for q in tl.static_range(BLOCK_W):
            ok = _rows_in(oh, row_end, col0 + q, W)[:, None] & c_ok[None, :]
            offs = _column_offsets(img, oh, col0 + q, cc, W, C)
            dh, dy, dy_xhat = dh_tile(h[q], dy_ptr, dh_ptr, offs, ok, mean, rstd, g_rstd, mean_dy, mean_dy_xhat, ACT,
                                      BATCH_STATS)
            sum_dh += dh
            if not BATCH_STATS:
                sum_dy += dy
                sum_dy_xhat += dy_xhat
    store_dh_partials(part_ptr, region, C, cc, c_ok, tl.sum(sum_dh, axis=0), tl.sum(sum_dy, axis=0),
                      tl.sum(sum_dy_xhat, axis=0), BATCH_STATS)


@triton.jit
def backward_dx(dh_ptr, wf_ptr, dy_ptr, dx_ptr, C, H, W,
                K: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """Backward pass 3a, one tile per program: dx = dy + conv_transpose(dh). The
    transpose of the 'same' convolution is the convolution with the flipped kernel
    (wf[t] = w[k*k - 1 - t]) and the padding mirrored, left = k - 1 - (k - 1) // 2 (the
    two differ for even k): dx[p] = dy[p] + sum_ij w[i, j] * dh[p - (i - left, j - left)]."""
    img, oh, col0, cc, c_ok = _flat_tile(C, H, W, BLOCK_H, BLOCK_W, BLOCK_C)
    d = _conv_cols(dh_ptr + img, wf_ptr, wf_ptr, oh, col0, cc, c_ok, H, W, C, K, K - 1 - (K - 1) // 2, False,
                   BLOCK_H, BLOCK_W, BLOCK_C)
    for q in tl.static_range(BLOCK_W):
        offs = _column_offsets(img, oh, col0 + q, cc, W, C)
        ok = _rows_in(oh, H, col0 + q, W)[:, None] & c_ok[None, :]
        dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, (dy + d[q]).to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def backward_dw(dh_ptr, x_ptr, part_ptr, C, H, W, n_bands, BAND_ROWS,
                K: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                BLOCK_C: tl.constexpr):
    """Backward pass 3b: per region, part[region, i * k + j, c] = sum_p dh[p] *
    x[p + (i - left, j - left)] for the GROUP tap rows i of this program's group
    (the launcher sizes GROUP so that its GROUP * k accumulators fit in registers; a
    last group may run past row k - 1). One elementwise accumulator per tap over the
    region's tiles, reduced once at the end. Register blocking along W as in
    _conv_cols: per tap row the BLOCK_W + k - 1 shifted x columns load once and each
    feeds k taps."""
    LEFT: tl.constexpr = (K - 1) // 2
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    n_groups = tl.cdiv(K, GROUP)
    cb = pid % n_cb
    rest = pid // n_cb
    i0 = (rest % n_groups) * GROUP
    region = rest // n_groups
    n = region // n_bands
    row0 = (region % n_bands) * BAND_ROWS
    row_end = tl.minimum(row0 + BAND_ROWS, H)
    cc = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cc < C
    img = n.to(tl.int64) * (H * W * C)
    accs = (tl.zeros([BLOCK_H, BLOCK_C], tl.float32),) * (GROUP * K)
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_H) * tl.cdiv(W, BLOCK_W)):
        _, oh, col0 = _region_tile(t, row0, W, BLOCK_H, BLOCK_W)
        d = ()
        for q in tl.static_range(BLOCK_W):
            ok = _rows_in(oh, row_end, col0 + q, W)[:, None] & c_ok[None, :]
            d = d + (tl.load(dh_ptr + _column_offsets(img, oh, col0 + q, cc, W, C), mask=ok, other=0.0),)
        for ii in tl.static_range(GROUP):
            i = i0 + ii
            r = oh + (i - LEFT)
            row = x_ptr + img + (r * W * C)[:, None] + cc[None, :]
            rows_end = tl.where(i < K, H, 0)
            xs = ()
            for q in tl.static_range(BLOCK_W + K - 1):
                col = col0 + (q - LEFT)
                ok = _rows_in(r, rows_end, col, W)[:, None] & c_ok[None, :]
                xs = xs + (tl.load(row + col * C, mask=ok, other=0.0).to(tl.float32),)
            for j in tl.static_range(K):
                acc = accs[ii * K + j]
                for q in tl.static_range(BLOCK_W):
                    acc += d[q] * xs[q + j]
                accs = accs[:ii * K + j] + (acc,) + accs[ii * K + j + 1:]
    for tap in tl.static_range(GROUP * K):
        tap_index = i0 * K + tap
        if tap_index < K * K:
            tl.store(part_ptr + (region * (K * K) + tap_index) * C + cc, tl.sum(accs[tap], axis=0), mask=c_ok)
