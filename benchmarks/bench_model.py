"""Whole-model benchmark: images/s of ConvMixer in eval and in one full training step
(forward, cross-entropy, backward, SGD update), every contender measured in the same run.

    python benchmarks/bench_model.py                          # this machine's device, default models
    python benchmarks/bench_model.py --device cuda            # bf16 autocast, batch 64 eval / 32 train
    python benchmarks/bench_model.py --quick                  # the small model only, a few runs (tests)
    python benchmarks/bench_model.py --profile fused,eager_channels_last   # + the share of each op

Contenders (--contenders): eager_nchw and eager_channels_last (the plain model,
ConvMixer(fused=False)), compile (torch.compile of the plain channels_last model),
fused (ConvMixer(fused=True): every block kind through the library's ops),
fused_mixer (ConvMixer(fused="mixer"): only the mixer blocks fused) and compile_fused
(torch.compile of the fused model). All start from the same weights. On a CPU the runs of
the contenders go round-robin (benchmarks/bench_mixer_block.py's Timer), so load from
elsewhere slows them alike.

Each (model, mode, contender, dtype) appends one CSV row to
benchmarks/results/model_<device>.csv; model_<device>.md (the table, with the speed-ups
over the faster eager layout and over compile) and model_<device>_<mode>.png are rebuilt
from the CSV (benchmarks/model_results.py). Memory: on a GPU the peak allocated during a
step beyond what was allocated before it; on a CPU, which keeps no allocator statistics,
the bytes autograd saves for backward during a training forward. --profile writes
model_<device>_profile.md: the share of one step's time that each op takes
(torch.profiler self time), per contender and mode, so the next bottleneck has a name.
"""

import argparse
import copy
import datetime
import os
import sys
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import convmixer_kernels as cmk  # noqa: E402
from bench_mixer_block import Timer, device_name, git_commit, saved_bytes, _triton_version  # noqa: E402
import gpu_timing  # noqa: E402
from model_results import append_rows, write_markdown, plot  # noqa: E402
from results_table import device_slug  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONTENDERS = ("eager_nchw", "eager_channels_last", "compile", "fused", "fused_mixer", "compile_fused")
# name -> (dim, depth, kernel, patch, activation, image size, classes); the published three
# at 224x224 (their released activations), and the paper's CIFAR-10 model at 32x32.
MODELS = {
    "convmixer_768_32": (768, 32, 7, 7, "relu", 224, 1000),
    "convmixer_1024_20_ks9_p14": (1024, 20, 9, 14, "gelu", 224, 1000),
    "convmixer_1536_20": (1536, 20, 9, 7, "gelu", 224, 1000),
    "convmixer_256_8": (256, 8, 5, 2, "gelu", 32, 10),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build(name: str, contender: str, device: torch.device) -> torch.nn.Module:
    dim, depth, k, p, act, _, classes = MODELS[name]
    fused = {"fused": True, "compile_fused": True, "fused_mixer": "mixer"}.get(contender, False)
    torch.manual_seed(0)  # the same weights for every contender
    model = cmk.ConvMixer(dim, depth, kernel_size=k, patch_size=p, num_classes=classes, activation=act,
                          fused=fused).to(device)
    with torch.no_grad():
        # Non-trivial BatchNorm statistics, so eval normalizes with something.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    if contender in ("eager_channels_last", "compile"):
        model = model.to(memory_format=torch.channels_last)
    if contender.startswith("compile"):
        model = torch.compile(model)
    return model


def input_layout(contender: str) -> torch.memory_format:
    # The fused models take what a data loader gives (NCHW) and choose their own layout.
    return torch.channels_last if contender in ("eager_channels_last", "compile") else torch.contiguous_format


def autocast(device: torch.device, dtype_name: str):
    """float32: no autocast; bfloat16: autocast, as a mixed-precision user runs the model."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype_name == "bfloat16")


def make_step(model, mode, device, dtype_name, images, labels):
    """fn(i) running one eval forward or one training step on images[i % len]."""
    if mode == "eval":
        model.eval()

        def step(i):
            with torch.no_grad(), autocast(device, dtype_name):
                model(images[i % len(images)])
        return step
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(i):
        with autocast(device, dtype_name):
            loss = F.cross_entropy(model(images[i % len(images)]), labels[i % len(labels)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def memory_bytes(model, mode, device, dtype_name, step, images):
    if device.type == "cuda":
        return gpu_timing.peak_memory_bytes(lambda: step(0)), "peak allocated"
    if mode == "eval":
        return "", ""
    with autocast(device, dtype_name):
        return saved_bytes(lambda: model(images[0])), "saved for backward"


def profile_step(step, device, top: int = 12):
    """[(op name, share of the step's self time, ms)] of one step, largest first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    times = [(e.key, getattr(e, attr)) for e in events if getattr(e, attr) > 0]
    total = sum(t for _, t in times)
    times.sort(key=lambda kv: -kv[1])
    return [(name, t / total, t / 1e3) for name, t in times[:top]]


def run_model(args, device, timer, name, dtype_name, mode, profiles):
    dim, depth, k, p, act, size, classes = MODELS[name]
    batch = args.batch_eval if mode == "eval" else args.batch_train
    rotate = 2 if device.type == "cuda" else 1
    torch.manual_seed(1)
    base = [torch.randn(batch, 3, size, size, device=device) for _ in range(rotate)]
    labels = [torch.randint(0, classes, (batch,), device=device) for _ in range(rotate)]
    jobs = []
    for contender in args.contenders:
        model = build(name, contender, device)
        images = [x.contiguous(memory_format=input_layout(contender)) for x in base]
        step = make_step(model, mode, device, dtype_name, images, labels)
        t0 = time.perf_counter()
        step(0)  # compiles where torch.compile is in the contender
        if device.type == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        mem, mem_kind = memory_bytes(model, mode, device, dtype_name, step, images)
        jobs.append((contender, step, first, mem, mem_kind))
        if contender in args.profile:
            profiles[(name, mode, dtype_name, contender)] = profile_step(step, device)
    timings = timer.interleaved([job[1] for job in jobs])
    rows = []
    for (contender, _, first, mem, mem_kind), (median, p20, p80) in zip(jobs, timings):
        rows.append(dict(
            model=name, mode=mode, contender=contender, dtype=dtype_name, batch=batch, image=size,
            median_ms=f"{median:.3f}", p20_ms=f"{p20:.3f}", p80_ms=f"{p80:.3f}",
            images_per_s=f"{batch / (median * 1e-3):.2f}", first_call_s=f"{first:.2f}", memory_bytes=mem,
            memory_kind=mem_kind, repeats=args.repeats, note=args.note, device=device_name(device),
            torch=torch.__version__, triton=_triton_version(), commit=git_commit(),
            date=datetime.date.today().isoformat(),
        ))
        print(f"  {name:26s} {mode:5s} {dtype_name:8s} {contender:20s} {median:10.2f} ms "
              f"{batch / (median * 1e-3):9.2f} img/s  (first call {first:.1f} s)")
    return rows


def write_profiles(path, profiles, device):
    """Appends one table per profiled (model, mode, dtype, contender) to path, so that
    runs of different models add to one file."""
    lines = [] if os.path.exists(path) else [
        f"# ConvMixer step profile: {device_name(device)}", "",
        "Share of one step's self time per op (torch.profiler, "
        + ("device" if device.type == "cuda" else "CPU") + " time), the 12 largest.", ""]
    for (name, mode, dtype_name, contender), ops in profiles.items():
        lines += [f"## {name}, {mode}, {dtype_name}, {contender}", "", "| op | share | ms |", "|---|---|---|"]
        lines += [f"| `{op}` | {share:.1%} | {ms:.2f} |" for op, share, ms in ops]
        lines.append("")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)} (default: all four)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--modes", default="eval,train")
    parser.add_argument("--dtypes", default=None,
                        help="float32 and/or bfloat16 (autocast); default bfloat16 on cuda, float32 on cpu, "
                             "plus bfloat16 where the CPU has bf16 matmul instructions")
    parser.add_argument("--batch-eval", type=int, default=None, help="default 8 on cpu, 64 on cuda")
    parser.add_argument("--batch-train", type=int, default=None, help="default 8 on cpu, 32 on cuda")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--profile", default="", help="contenders to profile (one step each, every mode)")
    parser.add_argument("--quick", action="store_true",
                        help="the small model, batch 2, eager and fused only, 1 warm-up and 3 runs")
    parser.add_argument("--note", default="", help="a remark stored in every row (e.g. 'machine under load')")
    parser.add_argument("--out", default=None, help="CSV path (default benchmarks/results/model_<device>.csv)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    if args.quick:
        args.models = args.models or "convmixer_256_8"
        args.contenders = "eager_nchw,fused"
        args.batch_eval = args.batch_eval or 2
        args.batch_train = args.batch_train or 2
        args.warmup = 1 if args.warmup is None else args.warmup
        args.repeats = args.repeats or 3
    cpu_bf16 = not gpu and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    args.models = (args.models or ",".join(MODELS)).split(",")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {list(MODELS)}")
    args.contenders = args.contenders.split(",")
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"--contenders: unknown {unknown}; known: {list(CONTENDERS)}")
    args.profile = [c for c in args.profile.split(",") if c]
    dtypes = (args.dtypes or ("bfloat16" if gpu else "float32,bfloat16" if cpu_bf16 else "float32")).split(",")
    args.batch_eval = args.batch_eval or (64 if gpu else 8)
    args.batch_train = args.batch_train or (32 if gpu else 8)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    args.repeats = args.repeats or (30 if gpu else 5)

    timer = Timer(device, args.warmup, args.repeats)
    out = args.out or os.path.join(RESULTS, f"model_{device_slug(device_name(device))}.csv")
    print(f"{device_name(device)}; contenders {args.contenders}; dtypes {dtypes}")
    rows, profiles = [], OrderedDict()
    for name in args.models:
        for dtype_name in dtypes:
            for mode in args.modes.split(","):
                rows += run_model(args, device, timer, name, dtype_name, mode, profiles)
                # Append as we go: a long CPU run that is stopped keeps what it measured.
                append_rows(out, rows[-len(args.contenders):])
    md = write_markdown(out)
    pngs = plot(out)
    print(f"wrote {len(rows)} rows to {out}, the table {md} and {', '.join(pngs) or 'no plot (no matplotlib)'}")
    if profiles:
        path = os.path.splitext(out)[0] + "_profile.md"
        write_profiles(path, profiles, device)
        print(f"added to the profile {path}")


if __name__ == "__main__":
    main()
