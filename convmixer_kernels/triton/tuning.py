"""Tile shapes and warps of each kernel: the small autotuning config sets, the fixed
defaults, and the switch between them.

Every heavy kernel is autotuned over its configs, keyed on (C, H, W, K) and, by
triton.autotune itself, on the dtypes of the tensor arguments; each layout has its own
kernels, so its own key space. The fixed default runs instead when
CONVMIXER_KERNELS_TRITON_AUTOTUNE=0, under TRITON_INTERPRET=1 (timing interpreted
programs is pointless and slow) and when torch.use_deterministic_algorithms is on: a
tile shape changes the order of the floating-point sums, so only a fixed config gives
bitwise-identical results from one process to the next.

Autotuning runs at the first call for a new key; warm a shape up before capturing it
in a CUDA graph.
"""

import functools
import os
from typing import Callable, Dict, List, Union

import torch
import triton

AUTOTUNE_ENV = "CONVMIXER_KERNELS_TRITON_AUTOTUNE"


# Which passes of float16 and bfloat16 run on tensor cores: the forward ones (the default,
# "1"), none ("0": every pass on the CUDA-core kernels), or "all", the backward too. The
# static roofline (benchmarks/roofline_static.py) puts the tensor-core backward at
# 1.4-1.7x the CUDA-core one's time (bound by shared-memory staging), so it runs only when
# asked for, until a GPU measures the two.
TENSOR_CORES_ENV = "CONVMIXER_KERNELS_TRITON_TENSOR_CORES"
_TENSOR_CORE_SETTINGS = ("0", "1", "all")


def _tensor_core_setting() -> str:
    value = os.environ.get(TENSOR_CORES_ENV, "1")
    if value not in _TENSOR_CORE_SETTINGS:
        raise ValueError(f"{TENSOR_CORES_ENV} must be one of {', '.join(_TENSOR_CORE_SETTINGS)}, got {value!r}")
    return value


def tensor_cores_enabled() -> bool:
    """Whether 16-bit forward passes run on tensor cores."""
    return _tensor_core_setting() != "0"


def tensor_core_backward_enabled() -> bool:
    """Whether 16-bit backward passes run on tensor cores."""
    if _tensor_core_setting() != "all":
        return False
    if not hasattr(triton.language, "gather"):  # pass 3b's diagonal sums (block_math.band_diagonals)
        raise RuntimeError(f"{TENSOR_CORES_ENV}=all needs tl.gather, which triton {triton.__version__} lacks "
                           "(install a triton that has it, or leave the backward on CUDA cores)")
    return True


def autotune_enabled() -> bool:
    return (
        os.environ.get(AUTOTUNE_ENV, "1") != "0"
        and os.environ.get("TRITON_INTERPRET", "0") != "1"
        and not torch.are_deterministic_algorithms_enabled()
    )


def _config(num_warps: int, **blocks) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=2)


# The resource budget (issue 15): no spills, and registers and shared memory that leave
# room for MIN_RESIDENT_WARPS warps per SM (<= 128 registers a thread). Per-SM limits of
# sm_80 and sm_90 (CUDA C++ Programming Guide, compute capabilities table): 64K 32-bit
# registers allocated per warp in units of 256, at most 32 CTAs and 64 warps, 1 KB of
# shared memory reserved per CTA, 164 KB (sm_80) and 228 KB (sm_90) in all.
MIN_RESIDENT_WARPS = 16
_REGS_PER_SM = 65536
_REG_GRANULE = 256
_MAX_CTAS = 32
_MAX_WARPS = 64
_CTA_SHARED = 1024
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}


def resident_warps(registers: int, num_warps: int, shared_bytes: int, shared_per_sm: int) -> int:
    """Warps of a kernel an SM holds at once."""
    per_warp = -(-max(registers, 1) * 32 // _REG_GRANULE) * _REG_GRANULE
    ctas = min(_REGS_PER_SM // (per_warp * num_warps), _MAX_CTAS, shared_per_sm // (shared_bytes + _CTA_SHARED))
    return min(ctas * num_warps, _MAX_WARPS)


def _shared_per_sm(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    known = getattr(props, "shared_memory_per_multiprocessor", None)
    return known or SHARED_PER_SM.get(props.major * 10 + props.minor, min(SHARED_PER_SM.values()))


def _device(named_args: Dict) -> torch.device:
    return next(t.device for t in named_args.values() if isinstance(t, torch.Tensor))


def _within_budget(fn, config: triton.Config, named_args: Dict, kwargs: Dict, shared_per_sm: int) -> bool:
    # Compiles the config as the autotuner would (the compile is cached for its run);
    # n_regs and n_spills are set when the binary is loaded.
    kernel = fn.warmup(**named_args, **kwargs, **config.all_kwargs(), grid=(1,))
    kernel._init_handles()
    return kernel.n_spills == 0 and resident_warps(kernel.n_regs, config.num_warps, kernel.metadata.shared,
                                                   shared_per_sm) >= MIN_RESIDENT_WARPS


def _prune(budget_fn, configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
    # Drop tiles that overhang the problem by more than twice (C = 8, or a 7 x 7 image,
    # would mostly compute masked-off lanes); keep the smallest if none fits. With a
    # budget_fn (the kernel) on a GPU, then drop the configs over the resource budget,
    # unless that leaves none.
    limits = {"BLOCK_C": named_args["C"], "BLOCK_H": named_args["H"], "BLOCK_W": named_args["W"]}
    if "N" in named_args:  # the tensor-core kernels stack the rows of all images
        limits["BLOCK_M"] = named_args["N"] * named_args["H"]

    def fits(cfg):
        return all(cfg.kwargs[name] <= 2 * triton.next_power_of_2(limit) for name, limit in limits.items()
                   if name in cfg.kwargs)

    kept = [cfg for cfg in configs if fits(cfg)] or [
        min(configs, key=lambda cfg: sum(v for k, v in cfg.kwargs.items() if k.startswith("BLOCK_")))]
    device = _device(named_args)
    if budget_fn is None or device.type != "cuda":
        return kept
    shared = _shared_per_sm(device)
    return [cfg for cfg in kept if _within_budget(budget_fn, cfg, named_args, kwargs, shared)] or kept


class Tunable:
    """A @triton.jit kernel with its autotuned twin and a fixed default config (a Config,
    or a function of the kernel size k giving one). With budget, the autotuner only
    times the configs within the resource budget (the tensor-core kernels; the CUDA-core
    ones, over it in most configs, keep theirs)."""

    def __init__(self, fn, configs: List[triton.Config],
                 default: Union[triton.Config, Callable[[int], triton.Config]], budget: bool = False):
        self.fn = fn
        self.configs = configs
        self.default = default
        prune = functools.partial(_prune, fn if budget else None)
        self._tuned = triton.autotune(
            configs=configs, key=["C", "H", "W", "K"], prune_configs_by={"early_config_prune": prune}
        )(fn)

    def launch(self, grid: Callable[[Dict], tuple], *args, **kwargs) -> None:
        """grid maps the meta-parameters (BLOCK_*) to the launch grid."""
        if autotune_enabled():
            self._tuned[grid](*args, **kwargs)
        else:
            config = self.default if isinstance(self.default, triton.Config) else self.default(kwargs["K"])
            meta = dict(config.kwargs)
            self.fn[grid(meta)](*args, **kwargs, **meta, num_warps=config.num_warps, num_stages=config.num_stages)


# channels_last: BLOCK_C contiguous channels x BLOCK_H rows x BLOCK_W columns, the
# columns register-blocked (kernels_channels_last._conv_cols): BLOCK_W + k - 1 column
# tensors of BLOCK_H * BLOCK_C / (32 * num_warps) values per thread are live per kernel row.
CL_TILE_CONFIGS = [
    _config(4, BLOCK_H=8, BLOCK_W=8, BLOCK_C=64),
    _config(8, BLOCK_H=16, BLOCK_W=8, BLOCK_C=64),
    _config(4, BLOCK_H=16, BLOCK_W=4, BLOCK_C=64),
    _config(4, BLOCK_H=4, BLOCK_W=16, BLOCK_C=64),
    _config(2, BLOCK_H=4, BLOCK_W=8, BLOCK_C=64),
    _config(4, BLOCK_H=8, BLOCK_W=8, BLOCK_C=32),
]


def cl_tile_default(k: int) -> triton.Config:
    # Above k = 11 the BLOCK_W + k - 1 live input columns no longer fit in registers at 4
    # values per thread (ptxas spills for sm_90); the narrower channel block holds 2.
    return CL_TILE_CONFIGS[0] if k <= 11 else CL_TILE_CONFIGS[5]


# NCHW: a BLOCK_H x BLOCK_W tile of one plane, W contiguous, its rows register-blocked
# in RB interleaved groups of BLOCK_H / RB rows (kernels_nchw._conv_rows): RB accumulators
# of BLOCK_H * BLOCK_W / (RB * 32 * num_warps) values per thread.
NCHW_TILE_CONFIGS = [
    _config(2, BLOCK_H=32, BLOCK_W=32, RB=8),
    _config(1, BLOCK_H=32, BLOCK_W=32, RB=8),
    _config(1, BLOCK_H=32, BLOCK_W=32, RB=16),
    _config(1, BLOCK_H=16, BLOCK_W=64, RB=8),
    _config(1, BLOCK_H=16, BLOCK_W=32, RB=8),
    _config(2, BLOCK_H=64, BLOCK_W=32, RB=16),
]
NCHW_TILE_DEFAULT = NCHW_TILE_CONFIGS[0]

# Backward pass 3b (the weight gradient) keeps one accumulator per weight tap of its
# group in registers, so its tiles hold one value per thread and row or column group:
# BLOCK_H * BLOCK_C == 32 * num_warps (channels_last), BLOCK_H * BLOCK_W / RB ==
# 32 * num_warps (NCHW).
CL_DW_CONFIGS = [
    _config(4, BLOCK_H=4, BLOCK_W=8, BLOCK_C=32),
    _config(4, BLOCK_H=2, BLOCK_W=8, BLOCK_C=64),
    _config(8, BLOCK_H=8, BLOCK_W=8, BLOCK_C=32),
    _config(4, BLOCK_H=4, BLOCK_W=4, BLOCK_C=32),
    _config(2, BLOCK_H=2, BLOCK_W=8, BLOCK_C=32),
]
CL_DW_DEFAULT = CL_DW_CONFIGS[0]

NCHW_DW_CONFIGS = [
    _config(4, BLOCK_H=32, BLOCK_W=32, RB=8),
    _config(4, BLOCK_H=16, BLOCK_W=32, RB=4),
    _config(4, BLOCK_H=32, BLOCK_W=64, RB=16),
    _config(2, BLOCK_H=16, BLOCK_W=32, RB=8),
]
NCHW_DW_DEFAULT = NCHW_DW_CONFIGS[0]

# Weight-gradient accumulators a pass-3b program may hold: a program takes a group of tap
# rows (columns for NCHW) with group * k <= DW_ACCUMULATORS, so up to k = 8 one program
# covers all k*k taps, k = 9 takes 2 groups and k = 31 16. More spill registers on sm_90
# (ptxas), the shifted input loads of the unrolled group being live at once.
DW_ACCUMULATORS = 64


def dw_group(k: int) -> int:
    """Tap rows per pass-3b program: the fewest programs the accumulator budget allows,
    with the rows spread evenly over them. The last group's rows past k are masked work,
    so min(k, 64 // k) = 7 rows at k = 9 would compute 14 rows for 9 (56% wasted); two
    groups of 5 compute 10."""
    groups = -(-k // max(1, min(k, DW_ACCUMULATORS // k)))
    return -(-k // groups)

# Tensor-core apply (banded_nchw.py, banded_channels_last.py): BLOCK_M rows of the
# flattened (image, row) axis x BAND_W columns (x BLOCK_C channels), one tl.dot a kernel
# row over a segment of band_segment(k) input columns, as many MACs an output. A narrow
# BAND_W = 16 spends the fewest (32 a kernel row for k <= 17; 32 columns would take 64)
# and moves as many shared-memory bytes an output as any wider one (Triton stages each
# operand there); tl.dot needs every dimension a power of two >= 16.
BAND_W = 16

# The defaults for k <= 17 stack the most rows that 128 registers hold at 8 warps (sm_80
# and sm_90; 127-128 at k = 7 and 9): the band, gathered from the k taps for every kernel
# row, serves BLOCK_M rows. Above k = 17 the segment doubles to 64 columns and the smaller
# tiles keep the operands in registers. Every config here meets the resource budget at
# the key shapes on sm_80 and sm_90 (compile_check --key-shapes --all-configs --budget;
# 2 warps x 32 rows took 168 registers on sm_80, 4 channels x 16 rows 142-151); on a GPU
# the autotuner also drops those over it for the shape at hand (_prune).
BANDED_NCHW_CONFIGS = [
    _config(8, BLOCK_M=128),
    _config(4, BLOCK_M=32),
    _config(4, BLOCK_M=64),
    _config(8, BLOCK_M=64),
]

BANDED_CL_CONFIGS = [
    _config(8, BLOCK_C=2, BLOCK_M=64),
    _config(4, BLOCK_C=2, BLOCK_M=16),
    _config(4, BLOCK_C=2, BLOCK_M=32),
]


def banded_nchw_default(k: int) -> triton.Config:
    return BANDED_NCHW_CONFIGS[0] if k <= 17 else BANDED_NCHW_CONFIGS[1]


def banded_cl_default(k: int) -> triton.Config:
    return BANDED_CL_CONFIGS[0] if k <= 17 else BANDED_CL_CONFIGS[1]


# The tensor-core statistics pass runs on the launcher's regions (bands of >= 8 rows of
# one image): BLOCK_M rows of a band a tile, band_rows(band) of them, at 4 warps.
BANDED_STATS_NCHW_CONFIGS = [_config(4), _config(8)]
BANDED_STATS_CL_CONFIGS = [_config(4, BLOCK_C=2), _config(8, BLOCK_C=4)]


def band_tile_rows(band_rows: int) -> int:
    """Rows of a statistics tile: the band's, rounded up to a power of two, 16 to 32."""
    return min(32, max(16, triton.next_power_of_2(band_rows)))


def band_segment(k: int) -> int:
    """Input columns of a kernel row's product: BAND_W + k - 1 rounded up to a power of two."""
    return triton.next_power_of_2(BAND_W + k - 1)


# The tensor-core backward (banded_backward_*.py). Pass 3a runs the apply pass's tiles and
# configs. Passes 1 and 2 run the statistics pass's tiles; NCHW its configs too, while
# channels_last at 4 warps x 2 channels takes 128 registers on sm_80 with pass 2's
# epilogue and spills with frozen BN's sums: 8 warps hold the 2 channels in 104-120.
BANDED_BACKWARD_CL_CONFIGS = [_config(8, BLOCK_C=2), _config(8, BLOCK_C=4)]

# Pass 3b keeps one fp32 product [BLOCK_C x] BAND_W x band_segment(k) over the region's
# tiles, kernel row by kernel row: 4 registers a thread and channel at 4 warps (8 above
# k = 17).
BANDED_DW_NCHW_CONFIGS = [_config(4), _config(2)]
BANDED_DW_CL_CONFIGS = [_config(4, BLOCK_C=2), _config(4, BLOCK_C=4)]
