"""Per-element math that the NCHW and channels_last kernels (and the reductions) share;
each layout only differs in how its tiles are shaped and summed."""

import triton
import triton.language as tl

from .activations import act_forward, act_forward_and_grad


@triton.jit
def chan_merge(count, mean, m2, part_count, part_mean, part_m2):
    """(count, mean, M2) of a running partial merged with another one (Chan et al.); the
    running partial may be empty (count 0)."""
    total = count + part_count
    frac = part_count / tl.maximum(total, 1.0)
    delta = part_mean - mean
    return total, mean + delta * frac, m2 + (part_m2 + delta * delta * (count * frac))


@triton.jit
def batchnorm_dh(h, dy, ok, mean, rstd, g_rstd, mean_dy, mean_dy_xhat, ACT: tl.constexpr,
                 BATCH_STATS: tl.constexpr):
    """dh = da * act'(h) and dy * xhat, both 0 where not ok, xhat = (act(h) - mean) * rstd:
      batch statistics: da = gamma * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))
      frozen BN:        da = gamma * rstd * dy   (mean_dy, mean_dy_xhat unused)."""
    a, da_dh = act_forward_and_grad(h, ACT)
    xhat = (a - mean) * rstd
    if BATCH_STATS:
        da = g_rstd * (dy - mean_dy - xhat * mean_dy_xhat)
    else:
        da = g_rstd * dy
    return tl.where(ok, da * da_dh, 0.0), tl.where(ok, dy * xhat, 0.0)


@triton.jit
def batchnorm_backward_constants(cc, c_ok, mean_ptr, var_ptr, gamma_ptr, sum_dy_ptr, sum_dy_xhat_ptr, eps, inv_count,
                                 HAS_GAMMA: tl.constexpr, BATCH_STATS: tl.constexpr):
    """(mean, rstd, gamma * rstd, mean(dy), mean(dy * xhat)) of channels cc (a scalar or a
    tensor of any shape) for backward pass 2; the means of dy come from pass 1's sums, and
    with frozen BN (which batchnorm_dh does not read them for) are `mean`."""
    mean = tl.load(mean_ptr + cc, mask=c_ok, other=0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.load(var_ptr + cc, mask=c_ok, other=1.0) + eps)
    if HAS_GAMMA:
        g_rstd = tl.load(gamma_ptr + cc, mask=c_ok, other=1.0).to(tl.float32) * rstd
    else:
        g_rstd = rstd
    if BATCH_STATS:
        mean_dy = tl.load(sum_dy_ptr + cc, mask=c_ok, other=0.0) * inv_count
        mean_dy_xhat = tl.load(sum_dy_xhat_ptr + cc, mask=c_ok, other=0.0) * inv_count
    else:
        mean_dy = mean
        mean_dy_xhat = mean
    return mean, rstd, g_rstd, mean_dy, mean_dy_xhat


@triton.jit
def dy_xhat_tile(h, dy_ptr, offs, ok, mean, rstd, ACT: tl.constexpr):
    """Backward pass 1 on one tile of h: (dy, dy * xhat) in fp32, xhat = (act(h) - mean) *
    rstd, 0 where not ok."""
    dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    return dy, dy * tl.where(ok, (act_forward(h, ACT) - mean) * rstd, 0.0)


@triton.jit
def dh_tile(h, dy_ptr, dh_ptr, offs, ok, mean, rstd, g_rstd, mean_dy, mean_dy_xhat, ACT: tl.constexpr,
            BATCH_STATS: tl.constexpr):
    """Backward pass 2 on one tile of h: dh (batchnorm_dh) stored in dh's dtype where ok;
    returns the tile's (dh, dy, dy * xhat) in fp32 (dh before its rounding to dh's dtype),
    0 where not ok."""
    dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    dh, dy_xhat = batchnorm_dh(h, dy, ok, mean, rstd, g_rstd, mean_dy, mean_dy_xhat, ACT, BATCH_STATS)
    tl.store(dh_ptr + offs, dh.to(dh_ptr.dtype.element_ty), mask=ok)
    return dh, dy, dy_xhat


@triton.jit
def store_dh_partials(part_ptr, region, C, cc, c_ok, dh_sum, dy_sum, dy_xhat_sum, BATCH_STATS: tl.constexpr):
    """Pass 2's partials of a region and channels cc: part[region, 0, c] = sum(dh) and,
    with frozen BN (no pass 1), part[region, 1 / 2, c] = sum(dy), sum(dy * xhat)."""
    if BATCH_STATS:
        tl.store(part_ptr + region * C + cc, dh_sum, mask=c_ok)
    else:
        tl.store(part_ptr + (region * 3) * C + cc, dh_sum, mask=c_ok)
        tl.store(part_ptr + (region * 3 + 1) * C + cc, dy_sum, mask=c_ok)
        tl.store(part_ptr + (region * 3 + 2) * C + cc, dy_xhat_sum, mask=c_ok)


@triton.jit
def band_diagonals(prod, KP: tl.constexpr):
    """Sums along the diagonals of products [..., BW, SEG] (per kernel row, dh^T times the
    input segments, in the tensor-core weight gradient): out[..., j] = sum_w prod[..., w,
    w + j], [..., KP]. A j with w + j past SEG - 1 reads a clamped column: the caller masks
    every j >= k (SEG >= BW + k - 1 keeps the others in range)."""
    BW: tl.constexpr = prod.shape[len(prod.shape) - 2]
    SEG: tl.constexpr = prod.shape[len(prod.shape) - 1]
    index = tl.minimum(tl.arange(0, BW)[:, None] + tl.arange(0, KP)[None, :], SEG - 1)
    if len(prod.shape) == 3:
        index = tl.broadcast_to(index[None, :, :], (prod.shape[0], BW, KP))
    return tl.sum(tl.gather(prod, index, len(prod.shape) - 1), len(prod.shape) - 2)
