"""benchmarks/roofline_static.py, the static roofline of the Triton eval forward: its
counts follow from the tile configs, the binding floor is the largest, and the committed
report is the one the script makes from today's configs."""

import csv
import os
import subprocess
import sys

import pytest

from tests.harness import ROOT
from tests.ops.backends.test_triton_compile import _has_nvidia_backend

RESULTS = os.path.join(ROOT, "benchmarks", "results")


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton without its NVIDIA backend (the probe compiles)")
def test_report_counts_floors_and_committed_copy(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "roofline_static.py"), str(tmp_path)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    with open(tmp_path / "roofline_static.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 2 shapes x 2 layouts x 2 kernel families x 2 machines.
    assert len(rows) == 16
    floors = ("dram_us", "tensor_core_us", "fp32_us", "shared_us")
    for row in rows:
        assert float(row[row["binding"] + "_us"]) == max(float(row[name]) for name in floors)
        assert (float(row["tc_GMAC"]) > 0) == row["kernel"].startswith("tensor_core.")
    by = {(r["kernel"], r["shape"], r["machine"]): r for r in rows}
    # DESIGN.md's DRAM floor: 4 bytes an output, 94 us at C = 768 on an H200 (4.3 TB/s).
    assert by[("cuda_core.nchw", "128x768x32x32", "H200")]["dram_us"] == "93.6"
    # The NCHW tensor-core tiles cover the image exactly: k x 32 segment columns an output.
    assert by[("tensor_core.nchw", "128x768x32x32", "H200")]["tc_GMAC"] == f"{128 * 768 * 1024 * 7 * 32 / 1e9:.2f}"
    for name in ("roofline_static.csv", "roofline_static.md"):
        with open(os.path.join(RESULTS, name)) as committed:
            assert (tmp_path / name).read_text() == committed.read(), (
                f"benchmarks/results/{name} is stale: run python benchmarks/roofline_static.py")
