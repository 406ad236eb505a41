#!/usr/bin/env bash
# One command that proves every GPU path on a lent GPU machine, inside a fixed budget:
#
#     bash scripts/gpu_check.sh                 # on the GPU machine, from the repository root
#
# The machine must already have torch (with CUDA), triton, nvcc and ninja; nothing is
# downloaded. Stages, each under its own cap (timeout --signal=INT, so pytest still
# writes its report), sharing what is left of GPU_CHECK_BUDGET seconds (default 480):
#   env          GPU, driver, clocks, nvcc, torch, triton, ninja, compute-sanitizer
#   build        the extension for this GPU's architecture only, ptxas resource usage in
#                the log; Triton's and torch.compile's warm-up run beside it
#   cuda-kernels a hard check that the build has its CUDA kernels (no silent skip)
#   smoke-*      every CUDA and Triton kernel path against the float64 reference, each
#                error next to eager's; then one 256x1536x32x32 bf16 case (32-bit index
#                overflow)
#   bench-*      the block benchmark on the key shapes (bf16, batch 128, 32x32, C=768 k=7
#                and C=1536 k=9), eager and torch.compile baselines, copy bandwidth
#   pytest       the gpu_quick tests (pytest -m gpu_quick), with xdist where present
#   memcheck, racecheck  compute-sanitizer on small cases that still take the 32x32
#                tiles (best effort: some machines refuse the tool; the summary says so)
# Outputs: at most 8 files in $GPU_CHECK_OUT (or $OUT, the device tool's folder):
# summary.txt, build.log, smoke.log, bench.csv, bench.log, pytest.log, junit.xml,
# sanitizer.log. The summary is printed last. Exit status: 0 when every stage ran and
# passed, 1 when one failed, 2 when the budget ran out before a stage could run.
# Afterwards, here: python scripts/gpu_results.py <files_at>/bench.csv
#
# GPU_CHECK_CLOCK (tests only): a file holding the time in seconds, read instead of the
# wall clock, so tests/tools/test_gpu_check.py can run the plumbing with stub commands.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BUDGET=${GPU_CHECK_BUDGET:-480}
OUTDIR=${GPU_CHECK_OUT:-${OUT:-/tmp/gpu_check_out}}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR" "$WORK"
SUMMARY=$OUTDIR/summary.txt
: >"$SUMMARY"

export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export CONVMIXER_KERNELS_QUIET_FALLBACK=1
export CONVMIXER_KERNELS_TRITON_AUTOTUNE=${CONVMIXER_KERNELS_TRITON_AUTOTUNE:-0}  # fixed configs
export CONVMIXER_KERNELS_EXPECT_CUDA=1    # a gpu test that would skip for a missing piece fails
export TRITON_CACHE_DIR=$WORK/triton TORCHINDUCTOR_CACHE_DIR=$WORK/inductor

now() { if [ -n "${GPU_CHECK_CLOCK:-}" ]; then cat "$GPU_CHECK_CLOCK"; else date +%s; fi; }
START=$(now)
FAILED=0
OUT_OF_BUDGET=0
left() { echo $((START + BUDGET - $(now))); }
note() { echo "$*" >>"$SUMMARY"; }

# cap_for WANT RESERVE: WANT seconds, or what the budget leaves after RESERVE seconds for
# the stages still to come.
cap_for() {
  local want=$1 reserve=$2 room
  room=$(($(left) - reserve))
  ((room < want)) && want=$room
  echo "$want"
}

# stage NAME WANT RESERVE LOG CMD...: runs CMD under its cap, appends its output to LOG,
# and writes "NAME rc=.. ..s (cap ..s, ..s left)" to the summary.
stage() {
  local name=$1 want=$2 reserve=$3 logf=$4 cap t0 rc
  shift 4
  cap=$(cap_for "$want" "$reserve")
  if ((cap < 10)); then
    note "$(printf '%-13s skipped: %ss of budget left' "$name" "$(left)")"
    OUT_OF_BUDGET=1
    return 99
  fi
  t0=$(now)
  echo "=== $name (cap ${cap}s): $*" >>"$logf"
  timeout --signal=INT --kill-after=15 "$cap" "$@" >>"$logf" 2>&1
  rc=$?
  note "$(printf '%-13s rc=%-3s %4ss (cap %ss, %ss left)' "$name" "$rc" $(($(now) - t0)) "$cap" "$(left)")"
  ((rc != 0)) && FAILED=1
  return "$rc"
}

# ---------------------------------------------------------------------------- env
{
  echo "--- env"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,memory.total --format=csv,noheader
  nvcc --version | tail -1
  echo "cores $(nproc)"
  $PY -c "import sys, torch, triton; from torch.utils.cpp_extension import is_ninja_available as ninja
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'triton', triton.__version__, 'ninja', ninja())"
  compute-sanitizer --version 2>&1 | tail -1
  $PY -c "import xdist" 2>/dev/null && echo "pytest-xdist present" || echo "pytest-xdist absent"
} >>"$SUMMARY" 2>&1
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>>"$SUMMARY")
note "architecture ${ARCH:-unknown}"

# ---------------------------------------------------------------------------- build
# The warm-up needs no extension: it compiles the benchmark's Triton kernels and
# torch.compile baselines into the caches while nvcc runs.
timeout --signal=INT 200 $PY scripts/gpu_warmup.py >"$WORK/warmup.log" 2>&1 &
WARMUP=$!
stage build 240 200 "$OUTDIR/build.log" env CONVMIXER_KERNELS_CUDA_ARCHS="${ARCH:-9.0}" MAX_JOBS="$(nproc)" \
  NVCC_APPEND_FLAGS="--resource-usage" $PY setup.py build_ext --inplace
CUDA_OK=0
stage cuda-kernels 30 180 "$OUTDIR/build.log" $PY -c "from convmixer_kernels import _extension as e
assert e.cuda_compiled(), e.cuda_missing_reason()
print('cuda kernels in the extension; cpu capability', e.cpu_capability())" && CUDA_OK=1
grep -E "error|spill stores|Used [0-9]+ registers" "$OUTDIR/build.log" |
  awk '/error/ || ($0 ~ /spill stores/ && $0 !~ / 0 bytes spill stores/) || /Used (2[0-9][0-9]|1[3-9][0-9]) registers/' |
  head -12 >>"$SUMMARY"

# ---------------------------------------------------------------------------- smoke
# Two processes at once, so a sticky CUDA error stops only its own cases: the CUDA smoke
# then the 403M-element case (GPU-bound), beside the Triton smoke (compile-bound, CPU).
(
  if ((CUDA_OK)); then
    stage smoke-cuda 90 150 "$WORK/smoke_cuda.log" env CUDA_LAUNCH_BLOCKING=1 $PY scripts/gpu_smoke.py cuda
    cuda_rc=$?
  fi
  stage smoke-big 60 130 "$WORK/smoke_big.log" $PY scripts/gpu_smoke.py big && ((${cuda_rc:-0} == 0))
) &
SMOKE_CUDA=$!
stage smoke-triton 120 150 "$WORK/smoke_triton.log" $PY scripts/gpu_smoke.py triton &
SMOKE_TRITON=$!
wait "$SMOKE_CUDA" || FAILED=1
wait "$SMOKE_TRITON" || FAILED=1
wait "$WARMUP"
note "warm-up rc=$?"
cat "$WORK"/smoke_cuda.log "$WORK"/smoke_triton.log "$WORK"/smoke_big.log >"$OUTDIR/smoke.log" 2>/dev/null

# ---------------------------------------------------------------------------- benchmark
BENCH="$PY benchmarks/bench_mixer_block.py --device cuda --shapes 128:768:32:7,128:1536:32:9 --dtypes bfloat16"
stage bench-eval 90 100 "$OUTDIR/bench.log" $BENCH --modes eval --baselines eager,compile --warmup 5 \
  --repeats 40 --out "$WORK/bench.csv"
stage bench-train 60 70 "$OUTDIR/bench.log" $BENCH --modes train --baselines eager --warmup 3 --repeats 20 \
  --out "$WORK/bench.csv"
[ -f "$WORK/bench.csv" ] && cp "$WORK/bench.csv" "$OUTDIR/bench.csv"

# ---------------------------------------------------------------------------- tests + sanitizer
if ((CUDA_OK)); then
  # In parallel with the tests; instrumentation makes even the small cases slow.
  (
    stage memcheck 90 10 "$OUTDIR/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer \
      --tool memcheck --error-exitcode 99 --print-limit 20 $PY scripts/gpu_sanitize.py
    stage racecheck 60 10 "$OUTDIR/sanitizer.log" compute-sanitizer --tool racecheck --error-exitcode 99 \
      --print-limit 20 $PY scripts/gpu_sanitize.py
    # a machine that refuses the tool is not a failed kernel
    if grep -qE "Device not supported|not supported on this|Unable to find|error 999" "$OUTDIR/sanitizer.log"; then
      echo "compute-sanitizer refused on this machine (best effort): not counted" >>"$SUMMARY"
      exit 0
    fi
    ! grep -q "rc=[1-9]" <(grep -E "^(memcheck|racecheck) " "$SUMMARY")
  ) &
  SANITIZER=$!
fi
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"
stage pytest 200 5 "$OUTDIR/pytest.log" env OMP_NUM_THREADS=2 $PY -m pytest -m gpu_quick -p no:cacheprovider \
  -q -rfE --maxfail=100 --durations=15 $XDIST --junitxml="$OUTDIR/junit.xml" tests
[ -n "${SANITIZER:-}" ] && { wait "$SANITIZER" || FAILED=1; }
((CUDA_OK)) || FAILED=1

# ---------------------------------------------------------------------------- summary
{
  echo "--- smoke"
  grep -E "^(FAIL|STICKY|big|ok)" "$OUTDIR/smoke.log" 2>/dev/null | cut -c1-160 | head -40
  echo "--- bench"
  grep -E "copy bandwidth|^batch|eval_fwd|train_fwd|Error" "$OUTDIR/bench.log" 2>/dev/null | cut -c1-160 | head -40
  echo "--- pytest"
  grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed|skipped|errors?)" "$OUTDIR/pytest.log" 2>/dev/null | tail -30
  echo "--- sanitizer"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|not supported|sanitizer script done" "$OUTDIR/sanitizer.log" 2>/dev/null
  echo "--- warm-up"
  tail -8 "$WORK/warmup.log"
  echo "total $(($(now) - START))s of ${BUDGET}s; failed=$FAILED out_of_budget=$OUT_OF_BUDGET"
} >>"$SUMMARY" 2>&1
cat "$SUMMARY"
((FAILED)) && exit 1
((OUT_OF_BUDGET)) && exit 2
exit 0
