"""scripts/gpu_check.sh without a GPU: every line of it runs, with stub commands in place
of python, nvidia-smi, nvcc and compute-sanitizer, on a virtual clock that each stub
advances by the time its stage is estimated to take on the lent 16-core GPU machine. It
checks the stage plumbing, that the estimated run fits the 480 s budget with each stage
under its cap, the 8-file limit on what comes back, and the summary; and that a failed
build or a short budget ends in a non-zero exit and says so.

Estimates (seconds on 16 cores, see the closing note of the GPU-check issue for the
measurements behind them): the build 150 (the slowest translation unit, a backward_*.cu
for sm_90 alone, plus the link; MAX_JOBS=16 runs the CPU levels and every .cu beside it),
the CUDA smoke 60 and then the 403M-element case 25 beside the Triton smoke 75 (Triton
compiles its kernels on the CPU, spread over worker processes), the eval benchmark 70 and
the training one 40 (the warm-up filled the compile caches during the build), the quick
tests 130 with memcheck 60 and racecheck 45 beside them.
"""

import os
import re
import stat
import subprocess
import textwrap

import pytest
from tests.harness import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
BUDGET = 480
OUTPUT_FILES = {"summary.txt", "build.log", "smoke.log", "bench.csv", "bench.log", "pytest.log", "junit.xml",
                "sanitizer.log"}
STAGES = ("build", "cuda-kernels", "smoke-cuda", "smoke-triton", "smoke-big", "bench-eval", "bench-train",
          "memcheck", "racecheck", "pytest")

# `advance SECONDS`: the stage took that long. A stub reads the clock when it starts,
# sleeps a hundredth of SECONDS for real (so stubs side by side overlap as their stages
# would) and moves the clock to at least start + SECONDS: stages run side by side cost
# the longest of them, one after another their sum.
_ADVANCE = """
advance() {
  local t0
  t0=$(cat "$GPU_CHECK_CLOCK")
  sleep "$(($1 / 100)).$(($1 % 100 / 10))"
  (
    flock 9
    local now; now=$(cat "$GPU_CHECK_CLOCK")
    local end=$((t0 + $1))
    # a new file moved into place: a reader never sees it half written
    ((end > now)) && echo "$end" >"$GPU_CHECK_CLOCK.new" && mv "$GPU_CHECK_CLOCK.new" "$GPU_CHECK_CLOCK"
  ) 9>"$GPU_CHECK_CLOCK.lock"
}
"""

_PYTHON = _ADVANCE + r"""
args="$*"
case "$args" in
  "-c import sys, torch, triton"*) echo "python 3.11 torch 2.11.0+cu130 cuda 13.0 triton 3.6.0 ninja True" ;;
  "-c import torch; print('%d.%d' % torch.cuda.get_device_capability())") echo "9.0" ;;
  "-c import xdist") exit 0 ;;
  "-c from convmixer_kernels import _extension"*)
    [ "${STUB_CUDA_BUILT:-1}" = 1 ] || { echo "AssertionError: the extension was built without CUDA" >&2; exit 1; }
    echo "cuda kernels in the extension; cpu capability avx512" ;;
  "scripts/gpu_warmup.py"*) echo "triton C=768 k=7 nchw: 9.0s" ;;
  "setup.py build_ext --inplace"*)
    advance 150
    [ "$CONVMIXER_KERNELS_CUDA_ARCHS" = "9.0" ] || { echo "wrong arch $CONVMIXER_KERNELS_CUDA_ARCHS"; exit 3; }
    echo "ptxas info    : Used 100 registers, 0 bytes spill stores, 0 bytes spill loads"
    exit "${STUB_BUILD_RC:-0}" ;;
  "scripts/gpu_smoke.py cuda") advance 60; echo "ok   cuda bfloat16 nchw 40x64x32x32 k=7 gelu eval" ;;
  "scripts/gpu_smoke.py triton") advance 75; echo "ok   triton bfloat16 nchw 8x64x32x32 k=7 relu eval" ;;
  "scripts/gpu_smoke.py big") advance 25; echo "big ok   cuda nchw: rel err vs float32 eager 3.1e-03" ;;
  "benchmarks/bench_mixer_block.py"*)
    [[ "$args" == *"--modes eval"* ]] && advance 70 || advance 40
    out=$(echo "$args" | sed -E 's/.*--out ([^ ]+).*/\1/')
    [ -f "$out" ] || echo "op,mode,backend,dtype,layout,shape,k,median_ms,device" >"$out"
    echo "mixer_block,eval_fwd,cuda,bfloat16,nchw,128x768x32x32,7,0.110,NVIDIA H200" >>"$out"
    echo "NVIDIA H200: copy bandwidth 4300.0 GB/s" ;;
  "-m pytest -m gpu_quick"*)
    [ "$CONVMIXER_KERNELS_EXPECT_CUDA" = 1 ] || { echo "CONVMIXER_KERNELS_EXPECT_CUDA not set"; exit 4; }
    advance 130
    junit=$(echo "$args" | sed -E 's/.*--junitxml=([^ ]+).*/\1/')
    echo '<testsuite tests="201" failures="0"/>' >"$junit"
    echo "201 passed in 128.00s" ;;
  *) echo "stub python: unexpected call: $args" >&2; exit 97 ;;
esac
"""

_SANITIZER = _ADVANCE + r"""
case "$*" in
  --version*) echo "Version 2025.3.0" ;;
  *memcheck*) advance 60; echo "========= ERROR SUMMARY: 0 errors" ;;
  *racecheck*) advance 45; echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)" ;;
  *) exit 98 ;;
esac
"""


def _stub(directory, name, body):
    path = directory / name
    path.write_text("#!/usr/bin/env bash\nset -u\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def run_check(tmp_path, budget=BUDGET, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "python", _PYTHON)
    _stub(bin_dir, "compute-sanitizer", _SANITIZER)
    _stub(bin_dir, "nvidia-smi", 'echo "NVIDIA H200, 570.00, 1980 MHz, 3201 MHz, 143771 MiB"')
    _stub(bin_dir, "nvcc", 'echo "Build cuda_13.0.r13.0/compiler.36424714_0"')
    clock = tmp_path / "clock"
    clock.write_text("1000\n")
    out = tmp_path / "out"
    full_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(bin_dir / "python"),
                    GPU_CHECK_CLOCK=str(clock), GPU_CHECK_OUT=str(out), GPU_CHECK_WORK=str(tmp_path / "work"),
                    GPU_CHECK_BUDGET=str(budget), **env)
    proc = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)
    return proc, out, int(clock.read_text())


def stage_lines(summary):
    """{stage: (rc, seconds, cap, left after)} from the summary's stage lines."""
    found = {}
    for line in summary.splitlines():
        m = re.match(r"(\S+)\s+rc=(\d+)\s+(\d+)s \(cap (\d+)s, (-?\d+)s left\)", line)
        if m:
            found[m.group(1)] = tuple(int(v) for v in m.groups()[1:])
    return found


def test_every_stage_runs_within_the_budget(tmp_path):
    proc, out, clock = run_check(tmp_path)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unexpected call" not in proc.stderr
    stages = stage_lines(summary)
    assert set(STAGES) <= set(stages), summary
    for name in STAGES:
        rc, seconds, cap, left_after = stages[name]
        assert rc == 0, f"{name}: {summary}"
        # each cap fits in what the budget had left when the stage started
        assert cap <= left_after + seconds, f"{name}: cap {cap}s > {left_after + seconds}s left"
    total = clock - 1000
    assert total <= BUDGET, f"the estimated run takes {total}s of {BUDGET}s"
    assert re.search(rf"total {total}s of {BUDGET}s; failed=0 out_of_budget=0", summary)
    assert "architecture 9.0" in summary and "NVIDIA H200" in summary
    # at most 8 files come back: exactly these, and the summary is the output's tail
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert all(p.is_file() for p in out.iterdir())
    assert proc.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])
    assert "201 passed" in summary and "ERROR SUMMARY: 0 errors" in summary
    assert "mixer_block,eval_fwd,cuda" in (out / "bench.csv").read_text()


def test_a_build_without_cuda_kernels_fails_the_run(tmp_path):
    proc, out, _ = run_check(tmp_path, STUB_CUDA_BUILT="0")
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 1
    stages = stage_lines(summary)
    assert stages["cuda-kernels"][0] != 0
    # the CUDA-only stages do not run; Triton, the benchmark and the tests still do
    assert "smoke-cuda" not in stages and "memcheck" not in stages
    assert {"smoke-triton", "bench-eval", "pytest"} <= set(stages)
    assert "failed=1" in summary


def test_a_failed_build_is_reported(tmp_path):
    proc, out, _ = run_check(tmp_path, STUB_BUILD_RC="1", STUB_CUDA_BUILT="0")
    stages = stage_lines((out / "summary.txt").read_text())
    assert proc.returncode == 1 and stages["build"][0] == 1


@pytest.mark.parametrize("budget", (300, 60))
def test_a_short_budget_skips_stages_and_says_so(tmp_path, budget):
    proc, out, _ = run_check(tmp_path, budget=budget)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode in (1, 2), summary
    assert re.search(r"skipped: -?\d+s of budget left", summary), summary
    assert len(list(out.iterdir())) <= 8
    assert summary.rstrip().splitlines()[-1].startswith("total ")
