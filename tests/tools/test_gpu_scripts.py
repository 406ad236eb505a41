"""The Python helpers of scripts/gpu_check.sh, run here on the CPU so that the few GPU
minutes never meet a typo: the smoke check's per-case report, the results filer on a
sample of the CSV a GPU run returns, and that every script compiles."""

import csv
import glob
import json
import os
import py_compile
import sys

import pytest
import torch

from tests.harness import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_results  # noqa: E402
import gpu_smoke  # noqa: E402
from results_table import FIELDS  # noqa: E402


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "scripts", "*.py"))), ids=os.path.basename)
def test_script_compiles(path, tmp_path):
    py_compile.compile(path, cfile=str(tmp_path / "compiled.pyc"), doraise=True)


def test_smoke_case_reports_each_error_beside_eagers():
    ok, text = gpu_smoke.run_case("cpu", (torch.float32, "channels_last", 2, 8, 9, 9, 3, "gelu"), device="cpu")
    assert ok, text
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ok   cpu float32") and "eval" in lines[0]
    assert "train" in lines[1]
    for name in ("y=", "dx=", "dweight=", "dgamma=", "running_mean="):
        assert name in lines[1], lines[1]


def test_smoke_case_flags_an_error_over_its_bound(monkeypatch):
    from tests.harness import parity

    def too_large(*args, **kwargs):
        return {"y": parity.Errors(error=0.5, eager=1e-7, bound=2e-6, seeds=[0])}

    monkeypatch.setattr(parity, "backend_errors", too_large)
    ok, text = gpu_smoke.run_case("cpu", (torch.float32, "nchw", 1, 4, 7, 7, 3, "relu"), device="cpu")
    assert not ok and text.startswith("FAIL") and "y=5.0e-01/1.0e-07!!" in text


def test_smoke_cases_are_well_formed():
    assert set(gpu_smoke.CASES) == {"cuda", "triton"}
    for specs in gpu_smoke.CASES.values():
        for dtype, layout, n, c, h, w, k, act in specs:
            assert layout in ("nchw", "channels_last") and 1 <= k <= 31 and act in ("gelu", "gelu_tanh", "relu", "silu")


def _sample_rows():
    common = dict(op="mixer_block", dtype="bfloat16", shape="128x768x32x32", k="7", activation="gelu",
                  p20_ms="0.1", p80_ms="0.2", device="NVIDIA H200", torch="2.11.0", triton="3.6.0",
                  commit="abc1234", date="2026-12-02", copy_gbps="4300.0")
    rows = []
    for mode in ("eval_fwd", "train_fwd_bwd"):
        for backend, ms in (("cuda", 0.11), ("triton", 0.2), ("eager", 0.9), ("compile", 0.5)):
            for layout in ("nchw", "channels_last"):
                rows.append({**{f: "" for f in FIELDS}, **common, "mode": mode, "backend": backend,
                             "layout": layout, "median_ms": str(ms)})
    return rows


def test_results_are_filed_per_device(tmp_path):
    sample = tmp_path / "bench.csv"
    with open(sample, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(_sample_rows())
    results, table = tmp_path / "results", tmp_path / "auto_select.json"
    gpu_results.main([str(sample), "--results", str(results), "--table", str(table)])
    gpu_results.main([str(sample), "--results", str(results), "--table", str(table)])  # a second run appends
    with open(results / "nvidia_h200.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2 * len(_sample_rows())
    md = (results / "nvidia_h200.md").read_text()
    assert "NVIDIA H200" in md and "eval_fwd, bfloat16, 128x768x32x32, k=7" in md
    assert sorted(p.name for p in results.glob("*.png")) == ["nvidia_h200_eval_fwd_bfloat16.png",
                                                             "nvidia_h200_train_fwd_bwd_bfloat16.png"]
    entries = json.loads(table.read_text())["entries"]
    # cuda and triton are the contenders of "auto"; one entry per (mode, layout)
    assert len(entries) == 4 and all(set(e["ms"]) == {"cuda", "triton"} for e in entries)


def test_results_refuse_a_file_that_is_not_a_benchmark_csv(tmp_path):
    bad = tmp_path / "junit.csv"
    bad.write_text("name,value\na,1\n")
    with pytest.raises(SystemExit, match="not a benchmark CSV"):
        gpu_results.main([str(bad), "--results", str(tmp_path), "--no-plots"])
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(FIELDS) + "\n")
    with pytest.raises(SystemExit, match="no benchmark rows"):
        gpu_results.main([str(empty), "--results", str(tmp_path), "--no-plots"])
