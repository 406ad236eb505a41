"""The benchmark script runs end to end on a tiny shape and writes CSV + markdown."""

import csv
import os
import subprocess
import sys
from tests.harness import ROOT


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
