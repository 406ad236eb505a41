"""The launchers of the `triton` backend (ops/backends/triton.py): the passes of
ops/backends/base.py on top of the kernels in this package.

Passes (one launch each):
  eval forward      apply                                   (BN folded to a per-channel affine)
  training forward  stats -> merge_welford -> apply          (batch mean and biased variance)
  backward          [stats (pass 1) -> sum] -> dh (pass 2) -> sum -> dx (3a), dw (3b) -> sum
float16 and bfloat16 run the forward passes on tensor cores (banded_*.py), and the backward
ones too with CONVMIXER_KERNELS_TRITON_TENSOR_CORES=all (banded_backward_*.py: by the
static roofline slower than the CUDA-core backward, see tuning.py); "0" sends every pass
to the CUDA cores. float32 runs on CUDA cores. On tensor cores dh, the operand of passes
3a and 3b, is held in x's dtype, else in float32.
Pass 1 runs only with batch statistics; with frozen BN pass 2 also reduces the sums
for dgamma and dbeta. Passes 3a and 3b both read dh with its halo. Synchronized
BatchNorm (ops/sync.py) calls the statistics pass, pass 1 and passes 2-3 one by one
(forward_stats, backward_sums, backward_with_sums).
Every reduction goes through per-region partials and reductions.py: no atomics, the
same bits on every run with a fixed config.
"""

from types import SimpleNamespace
from typing import Optional

import torch
import triton

from . import banded_backward_channels_last, banded_backward_nchw, banded_channels_last, banded_nchw
from . import kernels_channels_last as cl
from . import kernels_nchw as nchw
from . import reductions, tuning
from ..conventions import ACTIVATION_CODES, layout_of, memory_format

# Inputs whose convolutions run on tensor cores (tl.dot on the banded row matrix, fp32
# accumulation). float32 never reaches tl.dot, so no TF32 rounding can creep in: its
# kernels are the exact CUDA-core ones.
_TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)

_KERNELS = {
    "channels_last": SimpleNamespace(
        apply=tuning.Tunable(cl.forward_apply, tuning.CL_TILE_CONFIGS, tuning.cl_tile_default),
        stats=tuning.Tunable(cl.forward_stats, tuning.CL_TILE_CONFIGS, tuning.cl_tile_default),
        backward_stats=tuning.Tunable(cl.backward_stats, tuning.CL_TILE_CONFIGS, tuning.cl_tile_default),
        backward_dh=tuning.Tunable(cl.backward_dh, tuning.CL_TILE_CONFIGS, tuning.cl_tile_default),
        backward_dx=tuning.Tunable(cl.backward_dx, tuning.CL_TILE_CONFIGS, tuning.cl_tile_default),
        backward_dw=tuning.Tunable(cl.backward_dw, tuning.CL_DW_CONFIGS, tuning.CL_DW_DEFAULT),
        banded_apply=tuning.Tunable(banded_channels_last.forward_apply, tuning.BANDED_CL_CONFIGS,
                                    tuning.banded_cl_default, budget=True),
        banded_stats=tuning.Tunable(banded_channels_last.forward_stats, tuning.BANDED_STATS_CL_CONFIGS,
                                    tuning.BANDED_STATS_CL_CONFIGS[0], budget=True),
        banded_backward_stats=tuning.Tunable(banded_backward_channels_last.backward_stats,
                                             tuning.BANDED_BACKWARD_CL_CONFIGS, tuning.BANDED_BACKWARD_CL_CONFIGS[0],
                                             budget=True),
        banded_backward_dh=tuning.Tunable(banded_backward_channels_last.backward_dh,
                                          tuning.BANDED_BACKWARD_CL_CONFIGS, tuning.BANDED_BACKWARD_CL_CONFIGS[0],
                                          budget=True),
        banded_backward_dx=tuning.Tunable(banded_backward_channels_last.backward_dx, tuning.BANDED_CL_CONFIGS,
                                          tuning.banded_cl_default, budget=True),
        banded_backward_dw=tuning.Tunable(banded_backward_channels_last.backward_dw, tuning.BANDED_DW_CL_CONFIGS,
                                          tuning.BANDED_DW_CL_CONFIGS[0], budget=True),
    ),
    "nchw": SimpleNamespace(
        apply=tuning.Tunable(nchw.forward_apply, tuning.NCHW_TILE_CONFIGS, tuning.NCHW_TILE_DEFAULT),
        stats=tuning.Tunable(nchw.forward_stats, tuning.NCHW_TILE_CONFIGS, tuning.NCHW_TILE_DEFAULT),
        backward_stats=tuning.Tunable(nchw.backward_stats, tuning.NCHW_TILE_CONFIGS, tuning.NCHW_TILE_DEFAULT),
        backward_dh=tuning.Tunable(nchw.backward_dh, tuning.NCHW_TILE_CONFIGS, tuning.NCHW_TILE_DEFAULT),
        backward_dx=tuning.Tunable(nchw.backward_dx, tuning.NCHW_TILE_CONFIGS, tuning.NCHW_TILE_DEFAULT),
        backward_dw=tuning.Tunable(nchw.backward_dw, tuning.NCHW_DW_CONFIGS, tuning.NCHW_DW_DEFAULT),
        banded_apply=tuning.Tunable(banded_nchw.forward_apply, tuning.BANDED_NCHW_CONFIGS,
                                    tuning.banded_nchw_default, budget=True),
        banded_stats=tuning.Tunable(banded_nchw.forward_stats, tuning.BANDED_STATS_NCHW_CONFIGS,
                                    tuning.BANDED_STATS_NCHW_CONFIGS[0], budget=True),
        banded_backward_stats=tuning.Tunable(banded_backward_nchw.backward_stats, tuning.BANDED_STATS_NCHW_CONFIGS,
                                             tuning.BANDED_STATS_NCHW_CONFIGS[0], budget=True),
        banded_backward_dh=tuning.Tunable(banded_backward_nchw.backward_dh, tuning.BANDED_STATS_NCHW_CONFIGS,
                                          tuning.BANDED_STATS_NCHW_CONFIGS[0], budget=True),
        banded_backward_dx=tuning.Tunable(banded_backward_nchw.backward_dx, tuning.BANDED_NCHW_CONFIGS,
                                          tuning.banded_nchw_default, budget=True),
        banded_backward_dw=tuning.Tunable(banded_backward_nchw.backward_dw, tuning.BANDED_DW_NCHW_CONFIGS,
                                          tuning.BANDED_DW_NCHW_CONFIGS[0], budget=True),
    ),
}

# Fixed block sizes of the small reductions, so their summation order depends on the
# shapes alone.
_RED_BLOCK_P = 32
_RED_BLOCK_C = 64
_RED_BLOCK_COLS = 128

_INT32_MAX = 2**31 - 1


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


class _LaunchPlan:
    """Shapes, layout, kernels and prepared weight of one call."""

    def __init__(self, x, weight, activation):
        self.N, self.C, self.H, self.W = x.shape
        self.K = weight.shape[-1]
        self.layout = layout_of(x)
        if self.C * self.H * self.W > _INT32_MAX:
            raise ValueError(f"triton backend: one image of x must hold fewer than 2**31 elements, got "
                             f"{self.C}x{self.H}x{self.W}")
        self.kernels = _KERNELS[self.layout]
        self.act = ACTIVATION_CODES[activation]
        kk = self.K * self.K
        # float32 weights, tap-major [k*k, C] for channels_last (a contiguous vector per
        # tap), channel-major [C, k*k] for NCHW (a scalar run per plane).
        flat = weight.reshape(self.C, kk)
        if self.layout == "channels_last":
            self.w = torch.empty((kk, self.C), dtype=torch.float32, device=x.device).copy_(flat.t())
        else:
            self.w = flat.to(torch.float32).contiguous()
        # The tensor-core kernels take the same arrangement in x's dtype (the weight's own:
        # the op requires them equal), their dot operands.
        sixteen_bit = x.dtype in _TENSOR_CORE_DTYPES
        self.tensor_cores = sixteen_bit and tuning.tensor_cores_enabled()
        self.tensor_core_backward = sixteen_bit and tuning.tensor_core_backward_enabled()
        if self.tensor_cores or self.tensor_core_backward:
            self.w_band = (flat.t() if self.layout == "channels_last" else flat).contiguous()
        self._regions(x.device)

    def flipped(self, w: torch.Tensor) -> torch.Tensor:
        """Prepared weights w (self.w or self.w_band) with the taps in reverse order,
        w[k-1-i, k-1-j]: the kernel of the transposed conv."""
        return w.flip(0 if self.layout == "channels_last" else 1)

    def band_columns(self) -> dict:
        """The column constexprs of every tensor-core launch."""
        return dict(BLOCK_W=tuning.BAND_W, SEG=tuning.band_segment(self.K))

    def region_band(self) -> dict:
        """The tile constexprs of a tensor-core launch on the regions (a tile: BLOCK_M rows
        of a band)."""
        return dict(BLOCK_M=tuning.band_tile_rows(self.band_rows), **self.band_columns())

    def _regions(self, device):
        # Reductions run one program per (image, band of rows) and channel block; split
        # the images into bands of at least 8 rows until there are programs for every
        # multiprocessor a few times over.
        per_band = self.N * (self.C if self.layout == "nchw" else triton.cdiv(self.C, 64))
        target = 4 * _multiprocessors(device)
        rows = self.H
        while rows > 8 and per_band * triton.cdiv(self.H, rows) < target:
            rows = triton.cdiv(rows, 2)
        self.band_rows = rows
        self.n_bands = triton.cdiv(self.H, rows)
        self.P = self.N * self.n_bands
        if self.P * self.K * self.K * self.C > _INT32_MAX:
            raise ValueError("triton backend: the weight-gradient partials would exceed 2**31 elements")

    def region_grid(self, groups=1):
        if self.layout == "nchw":
            return lambda m: (self.N * self.C * self.n_bands * groups,)
        return lambda m: (self.P * groups * triton.cdiv(self.C, m["BLOCK_C"]),)

    def banded_grid(self):
        def grid(m):
            tiles = triton.cdiv(self.N * self.H, m["BLOCK_M"]) * triton.cdiv(self.W, tuning.BAND_W)
            return (tiles * (self.C if self.layout == "nchw" else triton.cdiv(self.C, m["BLOCK_C"])),)

        return grid

    def tile_grid(self):
        def grid(m):
            tiles = triton.cdiv(self.H, m["BLOCK_H"]) * triton.cdiv(self.W, m["BLOCK_W"])
            if self.layout == "nchw":
                return (self.N * self.C * tiles,)
            return (self.N * tiles * triton.cdiv(self.C, m["BLOCK_C"]),)

        return grid


def _or_dummy(t: Optional[torch.Tensor], dummy: torch.Tensor) -> torch.Tensor:
    # Pointer arguments the kernel never reads (HAS_* is False) still need a tensor.
    return dummy if t is None else t


def _column_sum(part: torch.Tensor, out: torch.Tensor, inner: int = 0, outer: int = 1) -> torch.Tensor:
    """out = part.sum(0) in a fixed order, part [P, cols] with any row stride; see
    reductions.sum_partials for inner/outer."""
    cols = part.shape[1]
    reductions.sum_partials[(triton.cdiv(cols, _RED_BLOCK_COLS),)](
        part, out, part.shape[0], cols, part.stride(0), inner or cols, outer,
        BLOCK_P=_RED_BLOCK_P, BLOCK_COLS=_RED_BLOCK_COLS,
    )
    return out


def _apply(plan, x, bias, gamma, beta, mean, var, eps):
    y = torch.empty_like(x)
    if plan.tensor_cores:
        plan.kernels.banded_apply.launch(
            plan.banded_grid(), x, plan.w_band, _or_dummy(bias, plan.w_band), _or_dummy(gamma, mean),
            _or_dummy(beta, mean), mean, var, y, plan.N, plan.C, plan.H, plan.W, eps,
            K=plan.K, ACT=plan.act, HAS_BIAS=bias is not None, HAS_GAMMA=gamma is not None,
            HAS_BETA=beta is not None, **plan.band_columns(),
        )
        return y
    plan.kernels.apply.launch(
        plan.tile_grid(), x, plan.w, _or_dummy(bias, plan.w), _or_dummy(gamma, mean), _or_dummy(beta, mean), mean,
        var, y, plan.C, plan.H, plan.W, eps,
        K=plan.K, ACT=plan.act, HAS_BIAS=bias is not None, HAS_GAMMA=gamma is not None,
        HAS_BETA=beta is not None,
    )
    return y


def forward_eval(x, weight, bias, gamma, beta, running_mean, running_var, eps, activation):
    plan = _LaunchPlan(x, weight, activation)
    return _apply(plan, x, bias, gamma, beta, running_mean, running_var, eps)


def _stats(plan, x, bias):
    """The statistics pass and its merge: the batch mean and biased variance of a."""
    f32 = dict(dtype=torch.float32, device=x.device)
    part_mean = torch.empty((plan.P, plan.C), **f32)
    part_m2 = torch.empty((plan.P, plan.C), **f32)
    if plan.tensor_cores:
        plan.kernels.banded_stats.launch(
            plan.region_grid(), x, plan.w_band, _or_dummy(bias, plan.w_band), part_mean, part_m2,
            plan.C, plan.H, plan.W, plan.n_bands, plan.band_rows,
            K=plan.K, ACT=plan.act, HAS_BIAS=bias is not None, **plan.region_band(),
        )
    else:
        plan.kernels.stats.launch(
            plan.region_grid(), x, plan.w, _or_dummy(bias, plan.w), part_mean, part_m2,
            plan.C, plan.H, plan.W, plan.n_bands, plan.band_rows,
            K=plan.K, ACT=plan.act, HAS_BIAS=bias is not None,
        )
    mean = torch.empty((plan.C,), **f32)
    var = torch.empty((plan.C,), **f32)
    reductions.merge_welford[(triton.cdiv(plan.C, _RED_BLOCK_C),)](
        part_mean, part_m2, mean, var, plan.C, plan.P, plan.n_bands, plan.band_rows, plan.H, plan.W,
        BLOCK_P=_RED_BLOCK_P, BLOCK_C=_RED_BLOCK_C,
    )
    return mean, var


def forward_train(x, weight, bias, gamma, beta, eps, activation):
    plan = _LaunchPlan(x, weight, activation)
    mean, var = _stats(plan, x, bias)
    return _apply(plan, x, bias, gamma, beta, mean, var, eps), mean, var


def _backward_problem(grad_out, x, weight, activation):
    plan = _LaunchPlan(x, weight, activation)
    if grad_out.stride() != x.stride():
        grad_out = grad_out.contiguous(memory_format=memory_format(plan.layout))
    return plan, grad_out


def _region_args(plan):
    return (plan.C, plan.H, plan.W, plan.n_bands, plan.band_rows)


def _sums(plan, grad_out, x, bias, mean, var, eps):
    """Pass 1 with batch statistics: (sum dy, sum dy * xhat) per channel."""
    f32 = dict(dtype=torch.float32, device=x.device)
    part = torch.empty((plan.P, 2, plan.C), **f32)
    args = (plan.region_grid(), x, plan.w_band if plan.tensor_core_backward else plan.w,
            _or_dummy(bias, plan.w), mean, var, grad_out, part, *_region_args(plan), eps)
    constexprs = dict(K=plan.K, ACT=plan.act, HAS_BIAS=bias is not None)
    if plan.tensor_core_backward:
        plan.kernels.banded_backward_stats.launch(*args, **constexprs, **plan.region_band())
    else:
        plan.kernels.backward_stats.launch(*args, **constexprs)
    return (_column_sum(part[:, 0], torch.empty((plan.C,), **f32)),
            _column_sum(part[:, 1], torch.empty((plan.C,), **f32)))


def _backward_apply(plan, grad_out, x, bias, gamma, mean, var, eps, sums, count):
    """Passes 2-3: (dx, dweight, dbias) and, with frozen statistics (sums None), the
    sums for dbeta and dgamma that pass 2 reduces itself; with batch statistics `sums`
    are (sum dy, sum dy * xhat) over `count` values per channel."""
    f32 = dict(dtype=torch.float32, device=x.device)
    C, P, K = plan.C, plan.P, plan.K
    kernels = plan.kernels
    region_args = _region_args(plan)
    batch_stats = sums is not None
    sum_dy, sum_dy_xhat = sums if batch_stats else (mean, mean)  # frozen BN: unread
    # dh is the tensor cores' operand in passes 3a and 3b, so it takes x's dtype there.
    dh = torch.empty_like(x, dtype=x.dtype if plan.tensor_core_backward else torch.float32)
    part = torch.empty((P, 1 if batch_stats else 3, C), **f32)
    w = plan.w_band if plan.tensor_core_backward else plan.w
    dh_args = (plan.region_grid(), x, w, _or_dummy(bias, plan.w), _or_dummy(gamma, mean), mean, var, grad_out,
               sum_dy, sum_dy_xhat, dh, part, *region_args, eps, 1.0 / count)
    dh_constexprs = dict(K=K, ACT=plan.act, HAS_BIAS=bias is not None, HAS_GAMMA=gamma is not None,
                         BATCH_STATS=batch_stats)
    if plan.tensor_core_backward:
        kernels.banded_backward_dh.launch(*dh_args, **dh_constexprs, **plan.region_band())
    else:
        kernels.backward_dh.launch(*dh_args, **dh_constexprs)
    dbias = _column_sum(part[:, 0], torch.empty((C,), **f32))
    frozen_sums = None
    if not batch_stats:
        frozen_sums = (_column_sum(part[:, 1], torch.empty((C,), **f32)),
                       _column_sum(part[:, 2], torch.empty((C,), **f32)))

    dx = torch.empty_like(x)
    part = torch.empty((P, K * K, C), **f32)
    if plan.tensor_core_backward:
        kernels.banded_backward_dx.launch(plan.banded_grid(), dh, plan.flipped(plan.w_band), grad_out, dx, plan.N, C,
                                          plan.H, plan.W, K=K, **plan.band_columns())
        kernels.banded_backward_dw.launch(plan.region_grid(), dh, x, part, *region_args, K=K, **plan.region_band())
    else:
        kernels.backward_dx.launch(plan.tile_grid(), dh, plan.flipped(plan.w), grad_out, dx, C, plan.H, plan.W, K=K)
        group = tuning.dw_group(K)
        kernels.backward_dw.launch(plan.region_grid(triton.cdiv(K, group)), dh, x, part, *region_args, K=K,
                                   GROUP=group)
    dweight = _column_sum(part.view(P, K * K * C), torch.empty((C, 1, K, K), **f32), inner=C, outer=K * K)
    return dx, dweight, dbias, frozen_sums


def backward(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, activation):
    plan, grad_out = _backward_problem(grad_out, x, weight, activation)
    sums = _sums(plan, grad_out, x, bias, mean, var, eps) if batch_stats else None
    count = plan.N * plan.H * plan.W
    dx, dweight, dbias, frozen_sums = _backward_apply(plan, grad_out, x, bias, gamma, mean, var, eps, sums, count)
    dbeta, dgamma = sums if batch_stats else frozen_sums
    return dx, dweight, dbias, dgamma, dbeta


# The pieces synchronized BatchNorm runs with collectives between them (ops/sync.py).

def forward_stats(x, weight, bias, activation):
    return _stats(_LaunchPlan(x, weight, activation), x, bias)


def backward_sums(grad_out, x, weight, bias, mean, var, eps, activation):
    plan, grad_out = _backward_problem(grad_out, x, weight, activation)
    return _sums(plan, grad_out, x, bias, mean, var, eps)


def backward_with_sums(grad_out, x, weight, bias, gamma, mean, var, eps, sum_dy, sum_dy_xhat, count, activation):
    plan, grad_out = _backward_problem(grad_out, x, weight, activation)
    dx, dweight, dbias, _ = _backward_apply(plan, grad_out, x, bias, gamma, mean, var, eps,
                                            (sum_dy, sum_dy_xhat), count)
    return dx, dweight, dbias
