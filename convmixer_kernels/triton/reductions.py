"""The second, small reduction over per-region partials: deterministic, no atomics.

Each program owns a block of columns and walks the P partial rows in a fixed order,
BLOCK_P rows at a time, so the result depends only on the shapes (and the launcher's
fixed BLOCK sizes), never on scheduling.
"""

import triton
import triton.language as tl

from .block_math import chan_merge


@triton.jit
def merge_welford(part_mean_ptr, part_m2_ptr, mean_ptr, var_ptr, C, P, n_bands, BAND_ROWS, H, W,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Batch mean and biased variance per channel from per-region (mean, M2) partials
    [P, C]; region p is band p % n_bands of an image, holding min(BAND_ROWS, H - row0) * W
    values. A block of partials is combined around its own mean, then merged into the
    running result with Chan's formula."""
    cc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cc < C
    count = 0.0
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        pp = p0 + tl.arange(0, BLOCK_P)
        p_ok = pp < P
        rows = tl.minimum(BAND_ROWS, H - (pp % n_bands) * BAND_ROWS)
        b_counts = tl.where(p_ok, rows * W, 0).to(tl.float32)
        ok = p_ok[:, None] & c_ok[None, :]
        offs = pp[:, None] * C + cc[None, :]
        p_mean = tl.load(part_mean_ptr + offs, mask=ok, other=0.0)
        p_m2 = tl.load(part_m2_ptr + offs, mask=ok, other=0.0)
        b_count = tl.sum(b_counts, axis=0)
        b_mean = tl.sum(b_counts[:, None] * p_mean, axis=0) / b_count
        dev = p_mean - b_mean[None, :]
        b_m2 = tl.sum(p_m2, axis=0) + tl.sum(b_counts[:, None] * dev * dev, axis=0)
        count, mean, m2 = chan_merge(count, mean, m2, b_count, b_mean, b_m2)
    tl.store(mean_ptr + cc, mean, mask=c_ok)
    tl.store(var_ptr + cc, m2 / count, mask=c_ok)


@triton.jit
def sum_partials(part_ptr, out_ptr, P, COLS, ROW_STRIDE, INNER, OUTER, BLOCK_P: tl.constexpr,
                 BLOCK_COLS: tl.constexpr):
    """out[(col % INNER) * OUTER + col // INNER] = sum_p part[p, col] for part [P, COLS]
    with rows ROW_STRIDE apart. With OUTER = 1 a plain column sum; with COLS = k*k*C,
    INNER = C, OUTER = k*k it turns tap-major partials [P, k*k, C] into the weight
    layout [C, k*k]."""
    cols = tl.program_id(0) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_ok = cols < COLS
    acc = tl.zeros([BLOCK_P, BLOCK_COLS], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        pp = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + pp[:, None].to(tl.int64) * ROW_STRIDE + cols[None, :],
                       mask=(pp < P)[:, None] & col_ok[None, :], other=0.0)
    tl.store(out_ptr + (cols % INNER) * OUTER + cols // INNER, tl.sum(acc, axis=0), mask=col_ok)
