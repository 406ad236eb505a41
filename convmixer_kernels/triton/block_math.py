"""Per-element math that the NCHW and channels_last kernels (and the reductions) share;
each layout only differs in how its tiles are shaped and summed."""

import triton
import triton.language as tl

from .activations import act_forward_and_grad


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
