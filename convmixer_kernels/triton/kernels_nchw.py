"""Triton kernels of the mixer block for contiguous NCHW tensors.

A program works on one (n, c) plane, so the per-channel values (weights, bias, BN
vectors) are scalars of the program; loads and stores run along W (the contiguous axis).

Every convolution (h = dwconv(x) + b in the forward passes and backward passes 1-2, the
transposed one of pass 3a; pass 3b, the weight gradient, likewise) works on a tile of
BLOCK_H rows x BLOCK_W columns held as a tuple of RB row groups, group q being the rows
r0 + q + RB * m (m < BLOCK_H / RB) as a [BLOCK_H / RB, BLOCK_W] tensor (register
blocking along H, _conv_rows): for each kernel column the RB + k - 1 input row groups are
loaded and converted to float32 once and each feeds up to k output groups from
registers, so a kernel column costs RB + k - 1 loads instead of k * RB. The halo is the
only extra DRAM traffic; the k re-reads of an input row (one per kernel column, shifted
along W) hit L1. k is a compile-time constant; the kernel columns run as a loop.

Kernels that reduce over (N, H, W) run one program per (plane, band of BAND_ROWS rows)
and loop over the band's tiles, writing one partial per region (n, band) and channel:
the same partial layout [P, ..., C] as the channels_last kernels, independent of the
tile config (see kernels_channels_last.py). Weights arrive as [C, k*k] float32.
"""

import triton
import triton.language as tl

from .activations import act_forward
from .block_math import batchnorm_backward_constants, chan_merge, dh_tile, dy_xhat_tile, store_dh_partials


@triton.jit
def _scalar(ptr, c, HAS: tl.constexpr, DEFAULT: tl.constexpr):
    if HAS:
        v = tl.load(ptr + c).to(tl.float32)
    else:
        v = DEFAULT
    return v


@triton.jit
def _group_rows(r0, q, RB: tl.constexpr, BLOCK_R: tl.constexpr):
    # Rows of row group q of a tile starting at row r0: r0 + q + RB * m, as a column.
    return r0 + q + RB * tl.arange(0, BLOCK_R)[:, None]


@triton.jit
def _conv_rows(x_plane, w_c, bias, r0, ow, H, W, K: tl.constexpr, LEFT: tl.constexpr, RB: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """h = dwconv(x) + bias, float32, on the tile at rows r0 .. r0 + RB * BLOCK_R - 1 and
    columns ow [1, BLOCK_W]: a tuple of RB row groups [BLOCK_R, BLOCK_W].
    out[p] = sum_ij w[i, j] * x[p + (i - LEFT, j - LEFT)], zero outside the plane
    (LEFT = (k - 1) // 2 is 'same' padding)."""
    h = (tl.zeros([BLOCK_R, BLOCK_W], tl.float32) + bias,) * RB
    for j in range(K):
        col = ow + (j - LEFT)
        col_ok = (col >= 0) & (col < W)
        # Input group t (rows r0 + t - left + RB * m) is tap row i = t - q of output group q.
        for t in tl.static_range(RB + K - 1):
            r = _group_rows(r0, t - LEFT, RB, BLOCK_R)
            xv = tl.load(x_plane + r * W + col, mask=(r >= 0) & (r < H) & col_ok, other=0.0).to(tl.float32)
            for q in tl.static_range(RB):
                if t - q >= 0:
                    if t - q < K:
                        h = h[:q] + (h[q] + tl.load(w_c + (t - q) * K + j) * xv,) + h[q + 1:]
    return h


@triton.jit
def _flat_tile(C, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # One tile per program, the tiles of a plane adjacent: (plane offset, channel, first
    # row, columns).
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles_h = tl.cdiv(H, BLOCK_H)
    tw = pid % tiles_w
    rest = pid // tiles_w
    th = rest % tiles_h
    plane = rest // tiles_h
    return plane.to(tl.int64) * (H * W), plane % C, th * BLOCK_H, tw * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]


@triton.jit
def forward_apply(x_ptr, w_ptr, bias_ptr, gamma_ptr, beta_ptr, mean_ptr, var_ptr, y_ptr, C, H, W, eps,
                  K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr,
                  HAS_BETA: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, RB: tl.constexpr):
    """y = x + (act(dwconv(x) + b) - mean) * gamma * rsqrt(var + eps) + beta, one tile per
    program: the eval forward and the second training pass."""
    BLOCK_R: tl.constexpr = BLOCK_H // RB
    base, c, r0, ow = _flat_tile(C, H, W, BLOCK_H, BLOCK_W)
    bias = _scalar(bias_ptr, c, HAS_BIAS, 0.0)
    h = _conv_rows(x_ptr + base, w_ptr + c * (K * K), bias, r0, ow, H, W, K, (K - 1) // 2, RB, BLOCK_R, BLOCK_W)
    mean = tl.load(mean_ptr + c)
    scale = _scalar(gamma_ptr, c, HAS_GAMMA, 1.0) / tl.sqrt_rn(tl.load(var_ptr + c) + eps)
    shift = _scalar(beta_ptr, c, HAS_BETA, 0.0)
    for q in tl.static_range(RB):
        rows = _group_rows(r0, q, RB, BLOCK_R)
        ok = (rows < H) & (ow < W)
        offs = base + rows * W + ow
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        # (a - mean) * scale: no cancellation when |mean| is large next to the spread of a.
        y = x + (act_forward(h[q], ACT) - mean) * scale + shift
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _region(C, n_bands, BAND_ROWS, H, pid):
    # Program pid of a (plane, band) grid: (region, channel, plane offset in rows, first
    # row, end row).
    plane = pid // n_bands
    band = pid % n_bands
    row0 = band * BAND_ROWS
    region = (plane // C) * n_bands + band
    return region, plane % C, plane.to(tl.int64) * H, row0, tl.minimum(row0 + BAND_ROWS, H)


@triton.jit
def _region_tile(t, row0, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # Tile t of a region, row-major over its BLOCK_H x BLOCK_W tiles: (first row, columns).
    tiles_w = tl.cdiv(W, BLOCK_W)
    return row0 + (t // tiles_w) * BLOCK_H, (t % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]


@triton.jit
def forward_stats(x_ptr, w_ptr, bias_ptr, part_mean_ptr, part_m2_ptr, C, H, W, n_bands, BAND_ROWS,
                  K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, RB: tl.constexpr):
    """First training pass: per (region, channel) the mean and M2 of a = act(h), each
    tile's own (mean, M2) merged into the region's with Chan's formula."""
    BLOCK_R: tl.constexpr = BLOCK_H // RB
    region, c, plane_rows, row0, row_end = _region(C, n_bands, BAND_ROWS, H, tl.program_id(0))
    x_plane = x_ptr + plane_rows * W
    w_c = w_ptr + c * (K * K)
    bias = _scalar(bias_ptr, c, HAS_BIAS, 0.0)
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_H) * tl.cdiv(W, BLOCK_W)):
        r0, ow = _region_tile(t, row0, W, BLOCK_H, BLOCK_W)
        h = _conv_rows(x_plane, w_c, bias, r0, ow, H, W, K, (K - 1) // 2, RB, BLOCK_R, BLOCK_W)
        a = ()
        t_sum = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
        for q in tl.static_range(RB):
            ok = (_group_rows(r0, q, RB, BLOCK_R) < row_end) & (ow < W)
            a = a + (tl.where(ok, act_forward(h[q], ACT), 0.0),)
            t_sum += a[q]
        t_count = (tl.maximum(tl.minimum(row_end - r0, BLOCK_H), 0)
                   * tl.minimum(W - (t % tl.cdiv(W, BLOCK_W)) * BLOCK_W, BLOCK_W)).to(tl.float32)
        t_mean = tl.sum(t_sum) / tl.maximum(t_count, 1.0)
        t_m2 = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
        for q in tl.static_range(RB):
            ok = (_group_rows(r0, q, RB, BLOCK_R) < row_end) & (ow < W)
            dev = tl.where(ok, a[q] - t_mean, 0.0)
            t_m2 += dev * dev
        count, mean, m2 = chan_merge(count, mean, m2, t_count, t_mean, tl.sum(t_m2))
    tl.store(part_mean_ptr + region * C + c, mean)
    tl.store(part_m2_ptr + region * C + c, m2)


@triton.jit
def backward_stats(x_ptr, w_ptr, bias_ptr, mean_ptr, var_ptr, dy_ptr, part_ptr, C, H, W, n_bands, BAND_ROWS, eps,
                   K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, RB: tl.constexpr):
    """Backward pass 1 (batch statistics): per region, sum(dy) and sum(dy * xhat) as
    part[region, 0 / 1, c]."""
    BLOCK_R: tl.constexpr = BLOCK_H // RB
    region, c, plane_rows, row0, row_end = _region(C, n_bands, BAND_ROWS, H, tl.program_id(0))
    x_plane = x_ptr + plane_rows * W
    w_c = w_ptr + c * (K * K)
    bias = _scalar(bias_ptr, c, HAS_BIAS, 0.0)
    mean = tl.load(mean_ptr + c)
    rstd = 1.0 / tl.sqrt_rn(tl.load(var_ptr + c) + eps)
    sum_dy = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_H) * tl.cdiv(W, BLOCK_W)):
        r0, ow = _region_tile(t, row0, W, BLOCK_H, BLOCK_W)
        h = _conv_rows(x_plane, w_c, bias, r0, ow, H, W, K, (K - 1) // 2, RB, BLOCK_R, BLOCK_W)
        for q in tl.static_range(RB):
            rows = _group_rows(r0, q, RB, BLOCK_R)
            dy, dy_xhat = dy_xhat_tile(h[q], dy_ptr, plane_rows * W + rows * W + ow, (rows < row_end) & (ow < W),
                                       mean, rstd, ACT)
            sum_dy += dy
            sum_dy_xhat += dy_xhat
    tl.store(part_ptr + (region * 2) * C + c, tl.sum(sum_dy))
    tl.store(part_ptr + (region * 2 + 1) * C + c, tl.sum(sum_dy_xhat))


@triton.jit
def backward_dh(x_ptr, w_ptr, bias_ptr, gamma_ptr, mean_ptr, var_ptr, dy_ptr, sum_dy_ptr, sum_dy_xhat_ptr, dh_ptr,
                part_ptr, C, H, W, n_bands, BAND_ROWS, eps, inv_count,
                K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr,
                BATCH_STATS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, RB: tl.constexpr):
    """Backward pass 2: dh = da * act'(h) into the float32 workspace, da as in
    kernels_channels_last.backward_dh; partials sum(dh) (and with frozen BN sum(dy),
    sum(dy * xhat)) as part[region, v, c]."""
    BLOCK_R: tl.constexpr = BLOCK_H // RB
    region, c, plane_rows, row0, row_end = _region(C, n_bands, BAND_ROWS, H, tl.program_id(0))
    x_plane = x_ptr + plane_rows * W
    w_c = w_ptr + c * (K * K)
    bias = _scalar(bias_ptr, c, HAS_BIAS, 0.0)
    mean, rstd, g_rstd, mean_dy, mean_dy_xhat = batchnorm_backward_constants(
        c, c < C, mean_ptr, var_ptr, gamma_ptr, sum_dy_ptr, sum_dy_xhat_ptr, eps, inv_count, HAS_GAMMA, BATCH_STATS)
    sum_dh = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
    sum_dy = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_H) * tl.cdiv(W, BLOCK_W)):
        r0, ow = _region_tile(t, row0, W, BLOCK_H, BLOCK_W)
        h = _conv_rows(x_plane, w_c, bias, r0, ow, H, W, K, (K - 1) // 2, RB, BLOCK_R, BLOCK_W)
        for q in tl.static_range(RB):
            rows = _group_rows(r0, q, RB, BLOCK_R)
            ok = (rows < row_end) & (ow < W)
            dh, dy, dy_xhat = dh_tile(h[q], dy_ptr, dh_ptr, plane_rows * W + rows * W + ow, ok, mean, rstd, g_rstd,
                                      mean_dy, mean_dy_xhat, ACT, BATCH_STATS)
            sum_dh += dh
            if not BATCH_STATS:
                sum_dy += dy
                sum_dy_xhat += dy_xhat
    store_dh_partials(part_ptr, region, C, c, c < C, tl.sum(sum_dh), tl.sum(sum_dy), tl.sum(sum_dy_xhat), BATCH_STATS)


@triton.jit
def backward_dx(dh_ptr, wf_ptr, dy_ptr, dx_ptr, C, H, W,
                K: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, RB: tl.constexpr):
    """Backward pass 3a, one tile per program: dx = dy + conv_transpose(dh), the
    convolution of dh with the flipped kernel wf and the padding mirrored (see
    kernels_channels_last.backward_dx)."""
    BLOCK_R: tl.constexpr = BLOCK_H // RB
    base, c, r0, ow = _flat_tile(C, H, W, BLOCK_H, BLOCK_W)
    d = _conv_rows(dh_ptr + base, wf_ptr + c * (K * K), 0.0, r0, ow, H, W, K, K - 1 - (K - 1) // 2, RB, BLOCK_R,
                   BLOCK_W)
    for q in tl.static_range(RB):
        rows = _group_rows(r0, q, RB, BLOCK_R)
        ok = (rows < H) & (ow < W)
        offs = base + rows * W + ow
        dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, (dy + d[q]).to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def backward_dw(dh_ptr, x_ptr, part_ptr, C, H, W, n_bands, BAND_ROWS,
                K: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                RB: tl.constexpr):
    """Backward pass 3b: per region, part[region, i * k + j, c] = sum_p dh[p] *
    x[p + (i - left, j - left)] for the GROUP tap columns j of this program's group (a
    last group may run past column k - 1), one elementwise accumulator per tap over the
    region's tiles, reduced once. Register blocking along H as in _conv_rows: per tap
    column the RB + k - 1 shifted x row groups load once and each feeds k taps."""
    LEFT: tl.constexpr = (K - 1) // 2
    BLOCK_R: tl.constexpr = BLOCK_H // RB
    pid = tl.program_id(0)
    n_groups = tl.cdiv(K, GROUP)
    j0 = (pid % n_groups) * GROUP
    region, c, plane_rows, row0, row_end = _region(C, n_bands, BAND_ROWS, H, pid // n_groups)
    x_plane = x_ptr + plane_rows * W
    dh_plane = dh_ptr + plane_rows * W
    accs = (tl.zeros([BLOCK_R, BLOCK_W], tl.float32),) * (K * GROUP)
    for t in range(tl.cdiv(BAND_ROWS, BLOCK_H) * tl.cdiv(W, BLOCK_W)):
        r0, ow = _region_tile(t, row0, W, BLOCK_H, BLOCK_W)
        d = ()
        for q in tl.static_range(RB):
            rows = _group_rows(r0, q, RB, BLOCK_R)
            d = d + (tl.load(dh_plane + rows * W + ow, mask=(rows < row_end) & (ow < W), other=0.0),)
        for jj in tl.static_range(GROUP):
            col = ow + (j0 + jj - LEFT)
            col_ok = (col >= 0) & (col < tl.where(j0 + jj < K, W, 0))
            # x row group t (rows r0 + t - left + RB * m) meets dh row group q at tap row t - q.
            for t_in in tl.static_range(RB + K - 1):
                r = _group_rows(r0, t_in - LEFT, RB, BLOCK_R)
                xv = tl.load(x_plane + r * W + col, mask=(r >= 0) & (r < H) & col_ok, other=0.0).to(tl.float32)
                for q in tl.static_range(RB):
                    if t_in - q >= 0:
                        if t_in - q < K:
                            accs = (accs[:(t_in - q) * GROUP + jj] + (accs[(t_in - q) * GROUP + jj] + d[q] * xv,)
                                    + accs[(t_in - q) * GROUP + jj + 1:])
    for i in tl.static_range(K):
        for jj in tl.static_range(GROUP):
            if j0 + jj < K:
                tl.store(part_ptr + (region * (K * K) + i * K + j0 + jj) * C + c, tl.sum(accs[i * GROUP + jj]))
