"""benchmarks/roofline_static.py, the static roofline of the Triton eval forward and
backward: its counts follow from the tile configs and the passes' traffic, the binding
floor is the largest, and the committed report is the one the script makes from today's
configs."""

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
    # 2 shapes x 2 layouts x 5 passes x 2 kernel families x 2 machines.
    assert len(rows) == 80
    assert {r["pass"] for r in rows} == {"apply", "backward_stats", "backward_dh", "backward_dx", "backward_dw"}
    floors = ("dram_us", "tensor_core_us", "fp32_us", "shared_us")
    for row in rows:
        assert float(row[row["binding"] + "_us"]) == max(float(row[name]) for name in floors)
        assert (float(row["tc_GMAC"]) > 0) == row["kernel"].startswith("tensor_core.")
    by = {(r["kernel"], r["pass"], r["shape"], r["machine"]): r for r in rows}
    shape, elements = "128x768x32x32", 128 * 768 * 1024
    # DESIGN.md's DRAM floor: 4 bytes an output, 94 us at C = 768 on an H200 (4.3 TB/s).
    assert by[("cuda_core.nchw", "apply", shape, "H200")]["dram_us"] == "93.6"
    # The NCHW tensor-core tiles cover the image exactly: k x 32 segment columns an output,
    # in the apply and in pass 3b's products alike.
    for pass_ in ("apply", "backward_dw"):
        assert by[("tensor_core.nchw", pass_, shape, "H200")]["tc_GMAC"] == f"{elements * 7 * 32 / 1e9:.2f}"
    # Pass 2 reads x and dy and writes dh: float32 on CUDA cores, bfloat16 on tensor cores;
    # pass 3b reads dh and x and writes and reads back k^2 partials a region and channel.
    for kernel, dh_bytes in (("cuda_core.nchw", 4), ("tensor_core.nchw", 2)):
        assert by[(kernel, "backward_dh", shape, "H100")]["dram_MB"] == f"{elements * (4 + dh_bytes) / 1e6:.1f}"
        dw = elements * (dh_bytes + 2) + 2 * 128 * 49 * 768 * 4
        assert by[(kernel, "backward_dw", shape, "H100")]["dram_MB"] == f"{dw / 1e6:.1f}"
    for name in ("roofline_static.csv", "roofline_static.md"):
        with open(os.path.join(RESULTS, name)) as committed:
            assert (tmp_path / name).read_text() == committed.read(), (
                f"benchmarks/results/{name} is stale: run python benchmarks/roofline_static.py")
