"""Benchmark of the mixer block x + BN(act(dwconv(x))): the fused backends against eager
NCHW, eager channels_last and torch.compile, measured in the same run.

    python benchmarks/bench_mixer_block.py                 # default shapes on this machine's device
    python benchmarks/bench_mixer_block.py --device cuda   # GPU mode: CUDA events, rotated inputs
    python benchmarks/bench_mixer_block.py --cpu-isa avx2  # as a CPU of that level sees it

Each (mode, backend, dtype, layout, shape, k) appends one CSV row to
benchmarks/results/<device>.csv; the markdown table benchmarks/results/<device>.md is
rebuilt from the CSV (benchmarks/plot_results.py draws the PNGs). Timings are the median
(with p20, p80) of many runs after warm-up. GB/s counts compulsory traffic only: one read
of x and one write of y (eval forward); plus one read of dy and one write of dx (training
forward+backward); `frac_copy` divides it by the copy bandwidth measured in the same run.
GFLOP/s counts the depthwise convolution's multiply-adds (2 k^2 per output; training:
three convolutions, forward, input gradient and weight gradient); on a CPU, where the op
is bound by FMA throughput rather than memory, `frac_sgemm` divides it by the rate of a
float32 matrix multiply (MKL/oneDNN sgemm, near the machine's FMA peak) in the same run.
"""

import argparse
import copy
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

# --cpu-isa LEVEL runs every contender as on a CPU of that level: our kernels at the level
# (CONVMIXER_KERNELS_CPU_CAPABILITY), ATen's vectorized kernels and torch.compile's C++ code
# (ATEN_CPU_CAPABILITY, which inductor follows), oneDNN's convolutions (ONEDNN_MAX_CPU_ISA)
# and MKL's GEMM, the sgemm ceiling (MKL_ENABLE_INSTRUCTIONS). Limiting ours alone would
# race an AVX2 kernel against AVX-512 eager, a machine that does not exist. The libraries
# read these when torch loads, so the script runs itself again with them set.
CPU_ISA_ENV = {
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
}


def _cpu_isa_environment(argv):
    """The environment that runs argv's --cpu-isa level, or None where it is already set (or
    none is asked for)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--cpu-isa", choices=sorted(CPU_ISA_ENV))
    level = pre.parse_known_args(argv)[0].cpu_isa
    if level is None:
        return None
    want = dict(CPU_ISA_ENV[level], CONVMIXER_KERNELS_CPU_CAPABILITY=level)
    if all(os.environ.get(k) == v for k, v in want.items()):
        return None
    return dict(os.environ, **want)


if __name__ == "__main__" and (_env := _cpu_isa_environment(sys.argv[1:])) is not None:
    os.execve(sys.executable, [sys.executable] + sys.argv, _env)

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import convmixer_kernels as cmk  # noqa: E402
from convmixer_kernels.reference import plain_mixer_block  # noqa: E402
import gpu_timing  # noqa: E402
from results_table import append_rows, device_slug, write_markdown  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    limited = f", eager at {os.environ['ATEN_CPU_CAPABILITY']}" if "ATEN_CPU_CAPABILITY" in os.environ else ""
    return f"{cpu} ({torch.get_num_threads()} threads, {cmk.cpu_capability()} kernels{limited})"


def git_commit() -> str:
    """HEAD's short hash, with "-dirty" where tracked files other than the results differ
    from it (the rows then measured code no commit holds)."""
    def git(*args):
        return subprocess.check_output(["git", *args], text=True, stderr=subprocess.DEVNULL,
                                       cwd=os.path.dirname(os.path.abspath(__file__))).strip()
    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)benchmarks/results")
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _quantiles(times):
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [min(times)] * 4
    return statistics.median(times), q[0], q[3]


class Timer:
    """Median/p20/p80 in ms of `fn(i)` over `repeats` runs after `warmup` runs; i picks
    one of several input sets so a GPU run does not find its input in L2."""

    def __init__(self, device: torch.device, warmup: int, repeats: int):
        self.device, self.warmup, self.repeats = device, warmup, repeats

    def __call__(self, fn):
        return self.interleaved([fn])[0]

    def interleaved(self, fns):
        """Times every fn. On a CPU the runs go round-robin (one run of each fn per
        round), so a burst of load from elsewhere on a shared machine slows every
        contender alike instead of whichever happened to be running; on a GPU, whose
        timing CUDA events isolate, each fn runs back to back."""
        if self.device.type == "cuda":
            return [gpu_timing.cuda_time(fn, self.warmup, self.repeats) for fn in fns]
        for fn in fns:
            for i in range(self.warmup):
                fn(i)
        times = [[] for _ in fns]
        for i in range(self.repeats):
            for fn, t in zip(fns, times):
                t0 = time.perf_counter()
                fn(i)
                t.append((time.perf_counter() - t0) * 1e3)
        return [_quantiles(t) for t in times]


def copy_bandwidth(device: torch.device, timer: Timer) -> float:
    """GB/s of a large same-device copy (read + write), the ceiling for this op."""
    if device.type == "cuda":
        return gpu_timing.copy_bandwidth_gbps(device)
    src = torch.randn(64 * 2**20 // 4)
    dst = torch.empty_like(src)
    ms, _, _ = timer(lambda i: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def sgemm_gflops(device: torch.device, timer: Timer):
    """GFLOP/s of a 2048^3 float32 matmul on the CPU: the practical FMA ceiling. None on
    a GPU, where the block is bound by memory and matmuls run on tensor cores."""
    if device.type == "cuda":
        return None
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    ms, _, _ = timer(lambda i: torch.mm(a, b))
    return 2 * 2048**3 / (ms * 1e-3) / 1e9


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward while fn() runs (deduplicated by storage)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def make_candidates(args, device, dim, k, dtype):
    """(name, layout) -> module for every contender of one shape."""
    torch.manual_seed(0)
    plain = plain_mixer_block(dim, k, args.activation).to(device=device, dtype=dtype)
    candidates = {}
    compile_modes = {"compile": "default", "compile-max-autotune": "max-autotune"}
    for layout in args.layouts:
        for baseline in args.baselines:
            if baseline == "eager":
                candidates[("eager", layout)] = plain
            else:
                candidates[(baseline, layout)] = torch.compile(copy.deepcopy(plain), mode=compile_modes[baseline])
        for backend in args.backends:
            if backend not in cmk.available_backends(device, dtype):
                print(f"  skip backend {backend}: {cmk.unavailable_backends(device, dtype).get(backend)}")
                continue
            fused = cmk.FusedMixerBlock.from_sequential(copy.deepcopy(plain).fn, backend=backend)
            candidates[(backend, layout)] = fused
    return candidates


def run_shape(args, device, timer, ceilings, batch, dim, size, k, dtype_name):
    copy_gbps, sgemm = ceilings
    dtype = DTYPES[dtype_name]
    rows = []
    inputs = {}
    act_bytes = batch * dim * size * size * torch.finfo(dtype).bits // 8
    rotate = args.rotate or (gpu_timing.rotation_count(2 * act_bytes, device) if device.type == "cuda" else 1)
    for layout in args.layouts:
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        xs = [torch.randn(batch, dim, size, size, device=device, dtype=dtype).contiguous(memory_format=fmt)
              for _ in range(rotate)]
        dys = [torch.randn_like(x) for x in xs]
        inputs[layout] = (xs, dys)
    candidates = make_candidates(args, device, dim, k, dtype)
    for mode in args.modes:
        jobs = []
        for (name, layout), module in candidates.items():
            xs, dys = inputs[layout]
            if mode == "eval":
                module.eval()

                def fn(i, module=module, xs=xs):
                    with torch.no_grad():
                        module(xs[i % len(xs)])
                jobs.append((name, layout, fn, 2 * act_bytes, 1, 0))
            else:
                module.train()
                xs_grad = [x.detach().requires_grad_() for x in xs]

                def fn(i, module=module, xs_grad=xs_grad, dys=dys):
                    module(xs_grad[i % len(xs_grad)]).backward(dys[i % len(dys)])
                # Compulsory traffic: x, y, dy, dx; convolutions: forward, input and weight gradients.
                jobs.append((name, layout, fn, 4 * act_bytes, 3, saved_bytes(lambda: module(xs_grad[0]))))
        timings = timer.interleaved([job[2] for job in jobs])
        for (name, layout, fn, compulsory, convolutions, saved), (median, p20, p80) in zip(jobs, timings):
            peak = gpu_timing.peak_memory_bytes(lambda: fn(0)) if device.type == "cuda" else ""
            gbps = compulsory / (median * 1e-3) / 1e9
            gflops = convolutions * 2 * k * k * batch * dim * size * size / (median * 1e-3) / 1e9
            rows.append(dict(
                op="mixer_block", mode="eval_fwd" if mode == "eval" else "train_fwd_bwd", backend=name,
                dtype=dtype_name, layout=layout, shape=f"{batch}x{dim}x{size}x{size}", k=k,
                activation=args.activation, median_ms=f"{median:.4f}", p20_ms=f"{p20:.4f}", p80_ms=f"{p80:.4f}",
                gbps=f"{gbps:.4g}", frac_copy=f"{gbps / copy_gbps:.4g}", copy_gbps=f"{copy_gbps:.1f}",
                peak_mem_bytes=peak, saved_for_backward_bytes=saved, device=device_name(device),
                torch=torch.__version__, triton=_triton_version(), commit=git_commit(),
                date=datetime.date.today().isoformat(), gflops=f"{gflops:.4g}",
                frac_sgemm=f"{gflops / sgemm:.4g}" if sgemm else "", sgemm_gflops=f"{sgemm:.1f}" if sgemm else "",
            ))
            print(f"  {rows[-1]['mode']:14s} {name:22s} {layout:14s} {median:9.3f} ms  "
                  f"{gbps:8.1f} GB/s ({gbps / copy_gbps:.2f} of copy)  {gflops:6.1f} GFLOP/s"
                  + (f" ({gflops / sgemm:.2f} of sgemm)" if sgemm else ""))
    return rows


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return ""


def parse_shapes(text):
    """'8:256:32:9,8:768:32:7' -> [(batch, dim, size, k), ...]"""
    return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]


DEFAULT_SHAPES = {
    # Issue targets: CPU at batch 8, 32x32; GPU at batch 128, 32x32.
    "cpu": "8:256:32:9,8:768:32:7",
    "cuda": "128:768:32:7,128:1536:32:9",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--shapes", default=None, help="batch:dim:size:k,...  (default per device)")
    parser.add_argument("--dtypes", default=None, help="comma list (default: float32 on cpu; bfloat16,float32 on cuda)")
    parser.add_argument("--layouts", default="nchw,channels_last")
    parser.add_argument("--modes", default="eval,train")
    parser.add_argument("--backends", default=None, help="fused backends (default: those available)")
    parser.add_argument("--activation", default="gelu")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rotate", type=int, default=None,
                        help="input sets cycled through (default: 1 on cpu; on cuda enough to span 3x L2)")
    parser.add_argument("--baselines", default=None,
                        help="eager,compile,compile-max-autotune (default: all three on cuda; eager,compile "
                             "on cpu, where max-autotune takes minutes to tune on a small machine)")
    parser.add_argument("--cpu-isa", choices=sorted(CPU_ISA_ENV), default=None,
                        help="run every contender as on a CPU of this level (ours, ATen, torch.compile, oneDNN, MKL)")
    parser.add_argument("--out", default=None, help="CSV path (default benchmarks/results/<device>.csv)")
    args = parser.parse_args(argv)
    if args.cpu_isa is not None and _cpu_isa_environment(argv if argv is not None else sys.argv[1:]) is not None:
        parser.error(f"--cpu-isa {args.cpu_isa}: run the script itself (its environment is set before torch loads)")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    args.layouts = args.layouts.split(",")
    args.modes = args.modes.split(",")
    dtypes = (args.dtypes or ("bfloat16,float32" if gpu else "float32")).split(",")
    shapes = parse_shapes(args.shapes or DEFAULT_SHAPES[device.type])
    args.backends = (args.backends.split(",") if args.backends else
                     [b for b in cmk.available_backends(device) if b != "eager"])
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 3)
    args.repeats = args.repeats if args.repeats is not None else (100 if gpu else 30)
    args.baselines = (args.baselines or ("eager,compile,compile-max-autotune" if gpu else "eager,compile")).split(",")

    timer = Timer(device, args.warmup, args.repeats)
    copy_gbps = copy_bandwidth(device, timer)
    sgemm = sgemm_gflops(device, timer)
    print(f"{device_name(device)}: copy bandwidth {copy_gbps:.1f} GB/s"
          + (f", float32 sgemm {sgemm:.1f} GFLOP/s" if sgemm else "") + f"; fused backends {args.backends}")
    out = args.out or os.path.join(RESULTS, f"{device_slug(device_name(device))}.csv")
    rows = []
    for batch, dim, size, k in shapes:
        for dtype_name in dtypes:
            print(f"batch {batch}, C {dim}, {size}x{size}, k {k}, {dtype_name}")
            rows += run_shape(args, device, timer, (copy_gbps, sgemm), batch, dim, size, k, dtype_name)
    append_rows(out, rows)
    md = write_markdown(out)
    print(f"wrote {len(rows)} rows to {out} and the table {md}")


if __name__ == "__main__":
    main()
