"""Smoke parity of every GPU kernel path, for the first minutes on a GPU (gpu_check.sh).

    CUDA_LAUNCH_BLOCKING=1 python scripts/gpu_smoke.py cuda
    python scripts/gpu_smoke.py triton      # cases spread over worker processes (compiles)
    python scripts/gpu_smoke.py big         # 256x1536x32x32 bf16: 32-bit index overflow

Each case runs eval and training, forward and backward, through tests/harness/parity.py against
reference.py in float64 with poisoned outputs, and prints one line: every output's error
next to eager's and the bound (2x eager + atol). Exit 1 on any failure. One process per
backend (gpu_check.sh), so a sticky CUDA error stops only its own cases.
"""

import concurrent.futures
import multiprocessing
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout: tests.harness

BF, F16, F32 = torch.bfloat16, torch.float16, torch.float32
# (dtype, layout, n, c, h, w, k, activation). csrc/cuda: 16-bit dtypes with k in 3/5/7/9
# take the tensor cores, float32 and other k the CUDA cores; the 32x32 tile (the one every
# ConvMixer shape selects) needs n * ceil(c / 8) >= 2 x the SM count (launch.cuh
# make_plan), hence n=40, c=64 on a 132-SM H100/H200; W (NCHW) or C (channels_last) a
# multiple of 8 stages 16 bytes at a time, else element by element.
CASES = {
    "cuda": [
        (BF, "nchw", 40, 64, 32, 32, 7, "gelu"), (BF, "channels_last", 40, 64, 32, 32, 9, "gelu"),
        (F16, "nchw", 2, 24, 16, 16, 3, "silu"), (F16, "channels_last", 2, 40, 20, 24, 5, "relu"),
        (F32, "nchw", 40, 64, 32, 32, 9, "gelu_tanh"), (F32, "channels_last", 2, 36, 13, 13, 7, "gelu"),
        (BF, "nchw", 2, 17, 13, 13, 4, "gelu"), (F32, "channels_last", 1, 9, 33, 33, 31, "relu"),
        (BF, "channels_last", 3, 19, 7, 7, 8, "gelu"), (BF, "nchw", 2, 33, 31, 31, 9, "relu"),
    ],
    # Triton: every pass in both layouts and the three dtypes at the published kernel
    # sizes, plus an even and a large k; each new (k, dtype, layout, activation) compiles.
    "triton": [
        (BF, "nchw", 8, 64, 32, 32, 7, "relu"), (BF, "channels_last", 8, 64, 32, 32, 9, "gelu"),
        (F16, "nchw", 2, 24, 16, 16, 9, "gelu"), (F16, "channels_last", 2, 40, 20, 24, 7, "gelu"),
        (F32, "nchw", 4, 32, 32, 32, 9, "gelu"), (F32, "channels_last", 2, 36, 13, 13, 7, "gelu"),
        (BF, "channels_last", 3, 19, 7, 7, 8, "silu"), (F32, "nchw", 1, 9, 33, 33, 31, "gelu_tanh"),
    ],
}


def run_case(backend, spec, device="cuda"):
    """One case, both modes: (ok, the lines to print)."""
    from tests.harness.parity import Case, backend_errors, make_inputs

    dtype, layout, n, c, h, w, k, act = spec
    case = Case(n=n, c=c, h=h, w=w, k=k, dtype=dtype, layout=layout, activation=act, device=device)
    lines, ok = [], True
    for training in (False, True):
        t0 = time.perf_counter()
        # Large cases hold thousands of values per channel: one draw decides.
        trials = 1 if n * h * w >= 2048 else None
        errors = backend_errors(make_inputs(case), backend, training=training, trials=trials)
        seconds = time.perf_counter() - t0
        parts = []
        for name, e in errors.items():
            bad = not e.error <= e.bound
            ok &= not bad
            parts.append(f"{name}={e.error:.1e}/{e.eager:.1e}{'!!' if bad else ''}")
        lines.append(f"{'ok  ' if ok else 'FAIL'} {backend} {str(dtype)[6:]:8s} {layout:13s} {n}x{c}x{h}x{w} k={k} "
                     f"{act:9s} {'train' if training else 'eval '} {seconds:5.1f}s  err/eager: " + " ".join(parts))
    return ok, "\n".join(lines)


def _guarded(backend, spec):
    try:
        return run_case(backend, spec)
    except Exception as exc:  # noqa: BLE001  (every failure is printed, the run goes on)
        sticky = "CUDA" in str(exc) or "illegal" in str(exc)
        text = f"FAIL {backend} {spec}: {type(exc).__name__}: {str(exc)[:500]}\n{traceback.format_exc(limit=4)}"
        return False, text + ("STICKY CUDA error\n" if sticky else "")


def run_backend(backend):
    specs = CASES[backend]
    failed = 0
    if backend == "triton":
        # Triton compiles on the CPU, one kernel at a time per process: spread the cases.
        workers = min(len(specs), max(1, (os.cpu_count() or 2) // 2), 8)
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = pool.map(_guarded, [backend] * len(specs), specs)
            for ok, text in results:
                print(text, flush=True)
                failed += not ok
    else:
        for spec in specs:
            ok, text = _guarded(backend, spec)
            print(text, flush=True)
            failed += not ok
            if "STICKY" in text:
                print("stopping: the CUDA context is unusable after a sticky error")
                return 1
    print(f"{backend}: {len(specs) - failed} of {len(specs)} cases passed")
    return 1 if failed else 0


def big():
    """256x1536x32x32 bf16 (403M elements): offsets past 2^31, the largest grids."""
    import convmixer_kernels as cmk
    from convmixer_kernels.reference import mixer_block_reference

    dev, failed = "cuda", 0
    for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(256, 1536, 32, 32, device=dev, dtype=BF).contiguous(memory_format=fmt)
        wt = (torch.randn(1536, 1, 9, 9, device=dev) / 9).to(BF)
        b = torch.randn(1536, device=dev, dtype=BF)
        g, beta = torch.rand(1536, device=dev) + 0.5, torch.randn(1536, device=dev)
        rm, rv = torch.randn(1536, device=dev) * 0.1, torch.rand(1536, device=dev) + 0.5
        ref = mixer_block_reference(x.float(), wt.float(), b.float(), g, beta, rm, rv, training=False)
        for backend in [name for name in cmk.available_backends(dev, BF) if name != "eager"]:
            y = cmk.mixer_block(x, wt, b, g, beta, rm, rv, training=False, backend=backend)
            err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
            last = ((y[-1].float() - ref[-1]).abs().max() / ref[-1].abs().max()).item()
            ok = err < 2e-2 and last < 2e-2  # bf16 output rounding against the float32 block
            failed += not ok
            print(f"big {'ok  ' if ok else 'FAIL'} {backend} {layout}: rel err vs float32 eager {err:.2e}; "
                  f"last image {last:.2e}", flush=True)
            del y
        del x, ref
        torch.cuda.empty_cache()
    return 1 if failed else 0


def main(argv):
    which = argv[1] if len(argv) > 1 else "cuda"
    from convmixer_kernels import _extension, available_backends, unavailable_backends

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, capability "
          f"{torch.cuda.get_device_capability()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs; "
          f"cuda kernels in the extension: {_extension.cuda_compiled()}")
    print("backends on cuda:", available_backends("cuda", BF), "unavailable:", unavailable_backends("cuda", BF))
    if which == "big":
        return big()
    if which not in CASES:
        raise SystemExit(f"usage: gpu_smoke.py cuda|triton|big, got {which!r}")
    if which == "cuda" and not _extension.cuda_compiled():
        print("FAIL cuda: the extension has no CUDA kernels:", _extension.cuda_missing_reason())
        return 1
    torch.manual_seed(0)
    return run_backend(which)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
