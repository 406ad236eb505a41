"""The benchmark script runs end to end on a tiny shape and writes CSV + markdown."""

import csv
import os
import subprocess
import sys

import pytest

from tests.harness import ROOT
from tests.harness.cpu_levels import RUNNABLE


def test_benchmark_cpu_mode(tmp_path):
    out = tmp_path / "bench.csv"
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_mixer_block.py"), "--device", "cpu",
         "--shapes", "2:8:9:3", "--baselines", "eager", "--warmup", "1", "--repeats", "3", "--out", str(out)],
        check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")),
    )
    rows = list(csv.DictReader(open(out)))
    contenders = {(r["mode"], r["backend"], r["layout"]) for r in rows}
    for mode in ("eval_fwd", "train_fwd_bwd"):
        for layout in ("nchw", "channels_last"):
            assert {(mode, "eager", layout), (mode, "cpu", layout)} <= contenders
    assert all(float(r["median_ms"]) > 0 and float(r["frac_copy"]) > 0 for r in rows)
    # On a CPU the op is FMA-bound: every row also carries its fraction of the sgemm rate.
    assert all(0 < float(r["frac_sgemm"]) and float(r["sgemm_gflops"]) > 0 for r in rows)
    table = open(tmp_path / "bench.md").read()
    assert "| cpu | channels_last |" in table and "vs eager" in table and "of sgemm" in table


@pytest.mark.skipif("avx2" not in RUNNABLE, reason="this CPU cannot run the avx2 level")
def test_cpu_isa_limits_every_contender(tmp_path):
    # --cpu-isa avx2: the script runs itself again with ours, ATen (and so torch.compile),
    # oneDNN and MKL limited to AVX2, and names the level in every row's device
    out = tmp_path / "bench.csv"
    probe = ("import os, torch, convmixer_kernels as cmk; "
             "print(torch.backends.cpu.get_cpu_capability(), cmk.cpu_capability(), "
             "os.environ['ONEDNN_MAX_CPU_ISA'], os.environ['MKL_ENABLE_INSTRUCTIONS'])")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = os.path.join(ROOT, "benchmarks", "bench_mixer_block.py")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_mixer_block
    finally:
        sys.path.pop(0)
    limited = bench_mixer_block._cpu_isa_environment(["--cpu-isa", "avx2"])
    seen = subprocess.run([sys.executable, "-c", probe], env=dict(limited, PYTHONPATH=env["PYTHONPATH"]),
                          capture_output=True, text=True, check=True).stdout.split()
    assert seen == ["AVX2", "avx2", "AVX2", "AVX2"]
    assert bench_mixer_block._cpu_isa_environment([]) is None
    subprocess.run([sys.executable, script, "--device", "cpu", "--cpu-isa", "avx2", "--shapes", "2:8:9:3",
                    "--modes", "eval", "--baselines", "eager", "--warmup", "1", "--repeats", "3", "--out", str(out)],
                   check=True, cwd=ROOT, env=env)
    rows = list(csv.DictReader(open(out)))
    assert rows and all("avx2 kernels, eager at avx2)" in r["device"] for r in rows)
