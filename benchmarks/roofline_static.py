"""The static roofline of the Triton eval forward and backward on H100 and H200, the
performance signal while no GPU runs (issue 15, item 3).

    python benchmarks/roofline_static.py [OUT_DIR]   # writes benchmarks/results/roofline_static.{csv,md}

For each pass (the eval forward's apply; the backward's pass 1 statistics, pass 2 dh,
pass 3a dx and pass 3b dweight), each kernel family (the CUDA-core kernels that float32
runs, and that float16/bfloat16 ran before the tensor-core kernels; the tensor-core
banded_*.py and banded_backward_*.py ones) at the key shapes (bfloat16, batch 128, 32x32,
C = 768 k = 7 and C = 1536 k = 9, both layouts), from the default tile configs in
triton/tuning.py, the launcher's regions and the kernels' loop structure:

  DRAM bytes      what the pass reads and writes: x, y, dy, dx 2 bytes an element, dh 4
                  (CUDA cores) or 2 (tensor cores), pass 3b's per-region weight-gradient
                  partials written and read back (dram_bytes); halos and weights are
                  served by L2 and counted nowhere
  tensor-core MACs  per program, tile and kernel row, BLOCK_M x SEG x BAND_W (x BLOCK_C)
                  for the band product, BAND_W x BLOCK_M x SEG for pass 3b's dh^T times
                  the input segments, padded tiles included
  FP32 instructions  the convolution's FMAs on CUDA cores (k^2 an output; pass 3b k times
                  its groups' rows) plus the epilogue's, counted in the PTX of a probe
                  kernel (the apply's act, BN affine and residual; pass 1's and 2's
                  BatchNorm backward; dx's sum; the tensor-core kernels also their finite
                  check), and pass 3b's diagonal sums on tensor cores
  shared memory   what Triton stages for each tl.dot: A and the band stored once, A read
                  once and the band by every warp (mma.sync) or warp group (wgmma) along M;
                  in pass 3b dh^T read by every warp of a channel (a model of its ldmatrix /
                  wgmma traffic, not a count)

and the floor each implies: bytes / bandwidth, MACs / tensor-core rate, instructions /
FP32 rate, bytes / shared-memory bandwidth. The largest names the binding resource; the
copy floor over it bounds the fraction of copy bandwidth the kernel can reach.

Machine figures: 132 SMs at 1.98 GHz for both; HBM 3.35 TB/s (H100 SXM spec) and, for the
H200, 4.8 TB/s spec and 4.3 TB/s measured copy (the figure the floors use, as
DESIGN.md's); FP32 128 lanes an SM (33.5 T FMA/s); shared memory 128 B a clock an SM;
dense 16-bit tensor cores 2048 MACs a clock an SM through wgmma (H100 SXM: 989 TFLOPS at
1.83 GHz = 132 x 2048 x 2 x 1.83e9). Triton emits mma.sync for 3-D dots and tiles with M <
64 on sm_90 (compile_check shows which); this model runs mma.sync at half the wgmma rate,
an assumption until a GPU measures it. Register pressure, latency and L1/L2 traffic are left out: a floor, not a
prediction.
"""

import csv
import os
import re
import sys
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from convmixer_kernels.triton import backend, tuning  # noqa: E402
from convmixer_kernels.conventions import ACTIVATION_CODES  # noqa: E402
from convmixer_kernels.triton.activations import act_forward  # noqa: E402
from convmixer_kernels.triton.block_math import dh_tile, dy_xhat_tile  # noqa: E402

SMS = 132
CLOCK = 1.98e9
MACHINES = {  # name: DRAM bytes/s the floors use
    "H100": 3.35e12,
    "H200": 4.3e12,
}
FP32_RATE = SMS * 128 * CLOCK
SHARED_RATE = SMS * 128 * CLOCK
WGMMA_RATE = SMS * 2048 * CLOCK
MMA_SYNC_RATE = WGMMA_RATE / 2
KEY_SHAPES = ((128, 768, 32, 32, 7), (128, 1536, 32, 32, 9))
BYTES = 2  # bfloat16
_PROBE_BLOCK = 128


# The passes of the report, in the order they run: the eval forward, then the backward's
# (batch statistics: pass 1 included).
PASSES = ("apply", "backward_stats", "backward_dh", "backward_dx", "backward_dw")
BACKWARD = PASSES[1:]


@triton.jit
def _epilogue_probe(h_ptr, x_ptr, y_ptr, dh_ptr, sum_ptr, mean, scale, shift, PASS: tl.constexpr,
                    ACT: tl.constexpr, FINITE_CHECK: tl.constexpr, BLOCK: tl.constexpr):
    # The per-output math after the convolution, as each pass's kernels write it (PASS
    # indexes PASSES; x_ptr is dy in the backward): the tensor-core kernels' finite check,
    # then the apply epilogue, pass 1's and pass 2's (block_math.py) or dx = dy + d.
    offs = tl.arange(0, BLOCK)
    h = tl.load(h_ptr + offs) + shift
    if FINITE_CHECK:
        finite = (h == h) & (tl.abs(h) < float("inf"))
        h = tl.where(tl.min(finite.to(tl.int32), 0) == 0, 0.0, h)
    if PASS == 0:
        y = tl.load(x_ptr + offs).to(tl.float32) + (act_forward(h, ACT) - mean) * scale + shift
        tl.store(y_ptr + offs, y.to(tl.bfloat16))
    elif PASS == 1:
        dy, dy_xhat = dy_xhat_tile(h, x_ptr, offs, offs < BLOCK, mean, scale, ACT)
        tl.store(sum_ptr, tl.sum(dy))
        tl.store(sum_ptr + 1, tl.sum(dy_xhat))
    elif PASS == 2:
        dh, _, _ = dh_tile(h, x_ptr, dh_ptr, offs, offs < BLOCK, mean, scale, scale, shift, shift, ACT, True)
        tl.store(sum_ptr, tl.sum(dh))
    else:
        tl.store(y_ptr + offs, (tl.load(x_ptr + offs).to(tl.float32) + h).to(tl.bfloat16))


_FP32_OP = re.compile(r"^\s*(?:@%p\d+\s+)?(?:fma|mul|add|sub|neg|abs|min|max|setp|rcp|sqrt|ex2|lg2|div|cvt)"
                      r"[.\w]*\.f32\b", re.M)


def epilogue_fp32_ops(pass_: str, activation: str, tensor_cores: bool) -> float:
    """FP32 instructions an output in the probe's PTX (sm_90, one warp) for a pass of the
    CUDA-core kernels or, with tensor_cores, of the tensor-core ones (the finite check
    added, dh in bfloat16 rather than float32). Pass 3b has no per-output epilogue."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if pass_ == "backward_dw":
        return 0.0
    consts = {"PASS": PASSES.index(pass_), "ACT": ACTIVATION_CODES[activation], "FINITE_CHECK": tensor_cores,
              "BLOCK": _PROBE_BLOCK}
    src = ASTSource(fn=_epilogue_probe, constexprs=consts,
                    signature={"h_ptr": "*fp32", "x_ptr": "*bf16", "y_ptr": "*bf16",
                               "dh_ptr": "*bf16" if tensor_cores else "*fp32", "sum_ptr": "*fp32", "mean": "fp32",
                               "scale": "fp32", "shift": "fp32", **{k: "constexpr" for k in consts}})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1}).asm["ptx"]
    return len(_FP32_OP.findall(ptx)) / (_PROBE_BLOCK / 32)


@dataclass
class Estimate:
    kernel: str
    pass_: str
    layout: str
    n: int
    c: int
    h: int
    w: int
    k: int
    config: str
    dram_bytes: float
    tc_macs: float
    tc_rate: float
    fp32_ops: float
    shared_bytes: float

    def floors_us(self, dram_rate: float) -> dict:
        return {
            "dram": self.dram_bytes / dram_rate * 1e6,
            "tensor_core": self.tc_macs / self.tc_rate * 1e6 if self.tc_macs else 0.0,
            "fp32": self.fp32_ops / FP32_RATE * 1e6,
            "shared": self.shared_bytes / SHARED_RATE * 1e6,
        }


def _cdiv(a, b):
    return -(-a // b)


def _padded(extent, block):
    return _cdiv(extent, block) * block


def _plan(layout, n, c, h, w, k):
    """The launcher's plan of the shape (its regions: bands of rows of one image), made on
    meta tensors."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.empty(n, c, h, w, dtype=torch.bfloat16, device="meta").contiguous(memory_format=fmt)
    return backend._LaunchPlan(x, torch.empty(c, 1, k, k, dtype=torch.bfloat16, device="meta"), "gelu")


def dram_bytes(pass_, plan, tensor_cores):
    """What a pass reads and writes in DRAM: bfloat16 x, dy, y and dx; dh in bfloat16 on
    tensor cores, float32 on CUDA cores; pass 3b's per-region weight-gradient partials
    (float32) written and read back by their reduction. Halos and weights are served by
    L2 and counted nowhere, nor are the per-channel partials of passes 1 and 2."""
    dh = BYTES if tensor_cores else 4
    per_output = {"apply": 2 * BYTES, "backward_stats": 2 * BYTES, "backward_dh": 2 * BYTES + dh,
                  "backward_dx": dh + 2 * BYTES, "backward_dw": dh + BYTES}[pass_]
    total = plan.N * plan.C * plan.H * plan.W * per_output
    if pass_ == "backward_dw":
        total += 2 * plan.P * plan.K * plan.K * plan.C * 4
    return total


def _describe(cfg, **extra):
    return " ".join(f"{key}={v}" for key, v in {**cfg.kwargs, **extra}.items()) + f" warps={cfg.num_warps}"


def cuda_core(pass_, layout, plan, epilogue):
    """The CUDA-core kernels (kernels_nchw / kernels_channels_last): k^2 FMAs an output on
    their padded tiles (pass 3b: k x its groups' rows, masked rows included)."""
    n, c, h, w, k = plan.N, plan.C, plan.H, plan.W, plan.K
    if pass_ == "backward_dw":
        cfg = tuning.NCHW_DW_DEFAULT if layout == "nchw" else tuning.CL_DW_DEFAULT
        macs = k * _padded(k, tuning.dw_group(k))
    else:
        cfg = tuning.NCHW_TILE_DEFAULT if layout == "nchw" else tuning.cl_tile_default(k)
        macs = k * k
    b = cfg.kwargs
    # The tiles of each region (a band of band_rows rows) or, for apply and dx, of an image.
    if pass_ in _REGION_PASSES:
        rows = plan.n_bands * _padded(plan.band_rows, b["BLOCK_H"])
    else:
        rows = _padded(h, b["BLOCK_H"])
    outputs = n * rows * _padded(w, b["BLOCK_W"]) * (c if layout == "nchw" else _padded(c, b["BLOCK_C"]))
    return Estimate("cuda_core." + layout, pass_, layout, n, c, h, w, k, _describe(cfg), dram_bytes(pass_, plan, False),
                    0.0, MMA_SYNC_RATE, outputs * (macs + epilogue), 0.0)


# The passes that reduce over regions (bands of rows of one image) and loop over a
# region's tiles; apply and dx take one tile a program.
_REGION_PASSES = ("backward_stats", "backward_dh", "backward_dw")


def _band_tiles(pass_, layout, plan):
    """(config, programs, tiles a program, BLOCK_M, channels a program) of a tensor-core
    pass: apply and dx one tile a program over the stacked rows of all images, the others
    the tiles of a region."""
    if pass_ in _REGION_PASSES:
        if pass_ == "backward_dw":
            cfg = tuning.BANDED_DW_NCHW_CONFIGS[0] if layout == "nchw" else tuning.BANDED_DW_CL_CONFIGS[0]
        else:
            cfg = tuning.BANDED_STATS_NCHW_CONFIGS[0] if layout == "nchw" else tuning.BANDED_BACKWARD_CL_CONFIGS[0]
        bm = tuning.band_tile_rows(plan.band_rows)
    else:
        cfg = tuning.banded_nchw_default(plan.K) if layout == "nchw" else tuning.banded_cl_default(plan.K)
        bm = cfg.kwargs["BLOCK_M"]
    batch = cfg.kwargs.get("BLOCK_C", 1)
    channel_blocks = _cdiv(plan.C, batch)
    tiles_w = _cdiv(plan.W, tuning.BAND_W)
    if pass_ in _REGION_PASSES:
        return cfg, channel_blocks * plan.P, _cdiv(plan.band_rows, bm) * tiles_w, bm, batch
    return cfg, channel_blocks * _cdiv(plan.N * plan.H, bm) * tiles_w, 1, bm, batch


def tensor_core(pass_, layout, plan, epilogue):
    """The tensor-core kernels (banded_*.py, banded_backward_*.py): per program, tile and
    kernel row one product, BLOCK_M x SEG x BAND_W (x BLOCK_C) for the band (passes 1, 2,
    3a and apply) and BAND_W x BLOCK_M x SEG for pass 3b's dh^T times the input segments,
    padded tiles included."""
    seg, bw, k = tuning.band_segment(plan.K), tuning.BAND_W, plan.K
    cfg, programs, tiles, bm, batch = _band_tiles(pass_, layout, plan)
    products = programs * tiles * k
    macs = products * batch * bm * seg * bw
    outputs = programs * tiles * batch * bm * bw
    fp32 = outputs * epilogue
    if pass_ == "backward_dw":
        # Operand A, dh^T [BAND_W, BLOCK_M], is read by every warp of a channel (they split
        # the SEG columns); B, the segments, once. Per region and kernel row the diagonal
        # sums gather and add BAND_W x next_power_of_2(k) values and check the k sums.
        wgmma = False
        a_bytes, b_bytes = batch * bw * bm * BYTES, batch * bm * seg * BYTES
        shared = products * ((1 + max(1, cfg.num_warps // batch)) * a_bytes + 2 * b_bytes)
        fp32 = programs * batch * k * (2 * bw * triton.next_power_of_2(k) + 3 * k)
    else:
        # Triton takes wgmma for a 2-D dot with M >= 64 on sm_90, one warp group (4 warps)
        # per 64 rows, each reading the band; mma.sync otherwise, every warp reading it
        # (3-D dots: the warps split over channels first, then rows).
        wgmma = layout == "nchw" and bm >= 64 and cfg.num_warps % 4 == 0
        band_reads = cfg.num_warps // 4 if wgmma else max(1, cfg.num_warps // batch)
        a_bytes = batch * bm * seg * BYTES
        band_bytes = batch * seg * bw * BYTES
        # Each operand stored once (from the loaded registers) and read back: A once, the
        # band by band_reads warps (or warp groups) of each channel.
        shared = products * (2 * a_bytes + (1 + band_reads) * band_bytes)
    desc = _describe(cfg, BLOCK_M=bm, SEG=seg) + (" wgmma" if wgmma else " mma.sync")
    return Estimate("tensor_core." + layout, pass_, layout, plan.N, plan.C, plan.H, plan.W, k, desc,
                    dram_bytes(pass_, plan, True), macs, WGMMA_RATE if wgmma else MMA_SYNC_RATE, fp32, shared)


SUMMARY = """\
The CUDA-core kernels are bound by their k^2 FP32 FMAs an output, as DESIGN.md says. The
tensor-core kernels take the convolution off the FP32 pipe (the epilogue is left) and do
not run out of tensor-core rate, but Triton stages every tl.dot operand through shared
memory: each kernel row stores and reads its input segment again (SEG = 2 x BAND_W columns
for BAND_W outputs: 8 bytes an output a kernel row) and the band is read by every warp (or
warp group) along M. That traffic, 66-117 bytes an output at k = 7-9 against 4 bytes of
DRAM, binds them. By this model the NCHW tensor-core kernel beats the CUDA-core one by
about 1.1-1.2x and the channels_last one (3-D dots on mma.sync, the band read by 4 warps
a channel) does not beat it; neither reaches the 0.8 of copy the issue asks for. What
would: staging each input tile once in shared memory and feeding all k kernel rows from
row-shifted views of it (explicit shared memory, e.g. Gluon), which cuts the traffic to
the reads alone, and a wider band tile with a separate 16-column halo product (BAND_W = 64:
1.25 instead of 2 segment columns an output). Until a GPU measures them the dispatch keeps
the tensor-core kernels for the 16-bit forward (CONVMIXER_KERNELS_TRITON_TENSOR_CORES=0 to
compare).

The backward lands worse. On CUDA cores its four passes add up to 899 µs (H100) and
804 µs (H200) at C = 768 k = 7, 2372 µs at C = 1536 k = 9, 0.53-0.88 of copy (dx and
dweight at k = 7 are DRAM bound, moving dh in float32). On tensor cores the DRAM floor
falls by a quarter (dh in bfloat16: 612 instead of 793 µs at k = 7 on an H100) and the
k^2 FMAs leave the FP32 pipe, but every pass is bound by shared memory: 1327-1337 µs at
k = 7 and 3412-3439 µs at k = 9, 0.28-0.46 of copy, 1.4-1.7x slower than the CUDA
cores by this model, so the dispatch runs the 16-bit backward on CUDA cores and the
tensor-core backward only with CONVMIXER_KERNELS_TRITON_TENSOR_CORES=all, until a GPU
measures the two. Besides the staged input segment of every kernel row (as in the
apply), passes 1, 2 and 3b run on their regions' tiles, 32 rows of one image at 32x32,
where the band (pass 3b: dh^T) is read by each of 4 warps for 32 rows rather than 128,
and pass 3b spends SEG = 32 MACs an output and kernel row where the CUDA cores spend k
FMAs. What would lift them: the staged-once input tile above, 128-row tiles in the
region passes (regions of several images, their partials split per image), and in pass
3b the k products of a tile from one staged dh^T."""

FIELDS = ["kernel", "pass", "layout", "shape", "k", "config", "dram_MB", "tc_GMAC", "fp32_Ginstr", "shared_MB",
          "machine", "dram_us", "tensor_core_us", "fp32_us", "shared_us", "binding", "floor_us", "max_frac_copy"]
_FAMILIES = (("cuda_core", cuda_core, False), ("tensor_core", tensor_core, True))


def rows(activation="gelu"):
    """The report's rows and the epilogue counts {(pass, tensor_cores): FP32 instructions an
    output}."""
    epilogues = {(pass_, tc): epilogue_fp32_ops(pass_, activation, tc) for pass_ in PASSES for tc in (False, True)}
    out = []
    for n, c, h, w, k in KEY_SHAPES:
        for layout in ("nchw", "channels_last"):
            plan = _plan(layout, n, c, h, w, k)
            for pass_ in PASSES:
                for _, estimate, tc in _FAMILIES:
                    est = estimate(pass_, layout, plan, epilogues[(pass_, tc)])
                    for machine, dram_rate in MACHINES.items():
                        floors = est.floors_us(dram_rate)
                        binding = max(floors, key=floors.get)
                        out.append({
                            "kernel": est.kernel, "pass": pass_, "layout": layout, "shape": f"{n}x{c}x{h}x{w}",
                            "k": k, "config": est.config, "dram_MB": f"{est.dram_bytes / 1e6:.1f}",
                            "tc_GMAC": f"{est.tc_macs / 1e9:.2f}", "fp32_Ginstr": f"{est.fp32_ops / 1e9:.2f}",
                            "shared_MB": f"{est.shared_bytes / 1e6:.1f}", "machine": machine,
                            "dram_us": f"{floors['dram']:.1f}", "tensor_core_us": f"{floors['tensor_core']:.1f}",
                            "fp32_us": f"{floors['fp32']:.1f}", "shared_us": f"{floors['shared']:.1f}",
                            "binding": binding, "floor_us": f"{floors[binding]:.1f}",
                            "max_frac_copy": f"{floors['dram'] / floors[binding]:.2f}",
                        })
    return out, epilogues


def _backward_totals(table, machine, kernel, shape):
    """(sum of the backward passes' binding floors, of their DRAM floors, the binding
    resource of each pass) of one kernel family, shape and machine."""
    passes = [r for r in table if r["machine"] == machine and r["kernel"] == kernel and r["shape"] == shape
              and r["pass"] in BACKWARD]
    return (sum(float(r["floor_us"]) for r in passes), sum(float(r["dram_us"]) for r in passes),
            "/".join(r["binding"] for r in passes))


def write(out_dir=os.path.join(ROOT, "benchmarks", "results")):
    table, epilogues = rows()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "roofline_static.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(table)
    counts = ", ".join(f"{pass_} {epilogues[(pass_, False)]:.1f} / {epilogues[(pass_, True)]:.1f}"
                       for pass_ in PASSES if pass_ != "backward_dw")
    lines = [
        "# Static roofline of the Triton eval forward and backward (bfloat16, gelu), H100 and H200",
        "",
        "Made by `python benchmarks/roofline_static.py` from the default tile configs (triton/tuning.py); "
        "see its docstring for what each column counts and the machine figures. Floors in µs; "
        "`max_frac_copy` = DRAM floor / binding floor, the most of the copy bandwidth the kernel can reach. "
        f"Epilogue FP32 instructions an output, CUDA-core / tensor-core kernels (the latter with their finite "
        f"check; PTX of a probe kernel, sm_90): {counts}. The backward is the one with batch statistics "
        "(pass 1 included). mma.sync is modeled at half the wgmma rate (an assumption).",
        "",
        "| kernel | pass | shape | k | config | machine | DRAM | tensor core | FP32 | shared | binding | "
        "max frac copy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(f"| {r['kernel']} | {r['pass']} | {r['shape']} | {r['k']} | {r['config']} | {r['machine']} | "
                     f"{r['dram_us']} | {r['tensor_core_us']} | {r['fp32_us']} | {r['shared_us']} | "
                     f"{r['binding']} | {r['max_frac_copy']} |")
    lines += ["", "## Where the estimate lands: the eval forward (H200, 4.3 TB/s copy)", ""]
    h200 = {(r["kernel"], r["shape"], r["k"]): r for r in table if r["machine"] == "H200" and r["pass"] == "apply"}
    for n, c, h, w, k in KEY_SHAPES:
        for layout in ("nchw", "channels_last"):
            shape = f"{n}x{c}x{h}x{w}"
            core, tc = h200[("cuda_core." + layout, shape, k)], h200[("tensor_core." + layout, shape, k)]
            lines.append(f"- {layout} C={c} k={k}: CUDA cores at most {core['max_frac_copy']} of copy "
                         f"({core['binding']} floor {core['floor_us']} µs), tensor cores at most "
                         f"{tc['max_frac_copy']} ({tc['binding']} floor {tc['floor_us']} µs; DRAM "
                         f"{tc['dram_us']} µs).")
    lines += ["", "## Where the estimate lands: the backward, before (CUDA cores) and after (tensor cores)", "",
              "The four passes' binding floors added up (passes 1, 2, 3a, 3b; the binding resource of each in "
              "order), against the DRAM floor of the same passes (which the tensor-core passes lower: dh in "
              "bfloat16).", ""]
    for n, c, h, w, k in KEY_SHAPES:
        for layout in ("nchw", "channels_last"):
            shape = f"{n}x{c}x{h}x{w}"
            for machine in MACHINES:
                core, core_dram, core_binding = _backward_totals(table, machine, "cuda_core." + layout, shape)
                tc, tc_dram, tc_binding = _backward_totals(table, machine, "tensor_core." + layout, shape)
                lines.append(f"- {layout} C={c} k={k}, {machine}: CUDA cores {core:.0f} µs ({core_binding}; DRAM "
                             f"{core_dram:.0f} µs, {core_dram / core:.2f} of copy), tensor cores {tc:.0f} µs "
                             f"({tc_binding}; DRAM {tc_dram:.0f} µs, {tc_dram / tc:.2f}): {core / tc:.2f}x.")
    lines += ["", SUMMARY]
    with open(os.path.join(out_dir, "roofline_static.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return table


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("roofline_static compiles a probe kernel: run it without TRITON_INTERPRET=1")
    if len(sys.argv) > 2 or any(arg.startswith("-") for arg in sys.argv[1:]):
        raise SystemExit(f"usage: python benchmarks/roofline_static.py [OUT_DIR]  (got {sys.argv[1:]})")
    for row in write(*sys.argv[1:2]):
        print(",".join(str(row[k]) for k in FIELDS))
