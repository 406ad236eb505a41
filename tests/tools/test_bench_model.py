"""benchmarks/bench_model.py runs end to end on the small model and writes CSV, table,
plots and a profile."""

import csv
import os
import subprocess
import sys

from tests.harness import ROOT


def test_bench_model_quick_cpu(tmp_path):
    out = tmp_path / "model.csv"
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_model.py"), "--device", "cpu", "--quick",
         "--dtypes", "float32", "--profile", "fused", "--note", "test run", "--out", str(out)],
        # The script puts benchmarks/ first on its path: name this checkout's package.
        check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
    )
    rows = list(csv.DictReader(open(out)))
    assert {(r["mode"], r["contender"]) for r in rows} == {
        (mode, contender) for mode in ("eval", "train") for contender in ("eager_nchw", "fused")}
    assert all(float(r["images_per_s"]) > 0 and r["model"] == "convmixer_256_8" and r["note"] == "test run"
               for r in rows)
    # On a CPU a training row carries the bytes saved for backward; the fused model saves less.
    saved = {r["contender"]: int(r["memory_bytes"]) for r in rows if r["mode"] == "train"}
    assert 0 < saved["fused"] < saved["eager_nchw"]
    table = open(tmp_path / "model.md").read()
    assert "| fused |" in table and "vs eager" in table and "Measured under: test run" in table
    profile = open(tmp_path / "model_profile.md").read()
    assert "convmixer_kernels::gemm_epilogue_eval" in profile and "convmixer_kernels::mixer_block_eval" in profile
