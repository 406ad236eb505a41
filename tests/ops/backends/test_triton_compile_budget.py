"""The resource budget of the Triton tensor-core kernels, checked without a GPU: the eval
and training forward and the backward (batch statistics and frozen BN) of the key shapes
(bfloat16, batch 128, 32x32, C = 768 k = 7 and C = 1536 k = 9, both layouts) compiled for
sm_90 and sm_80 (triton.compile and Triton's own ptxas, see tools/triton_compile_check.py):
the tensor-core kernels of every pass have no spills, at most 128 registers a thread (so
at least 16 warps resident per SM at their 4 or 8 warps), and mma (sm_80; sm_90 below
M = 64) or wgmma in their PTX."""

import re

import pytest

from tests.ops.backends.test_triton_compile import _has_nvidia_backend, run_compile_check


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton without its NVIDIA backend and ptxas")
def test_key_shapes_meet_the_budget_on_sm90_and_sm80():
    result = run_compile_check("--key-shapes", "--budget", "--arch", "90", "--arch", "80", timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = re.findall(r"^sm_(\d+) regs +(\d+) spill +(\d+)/ *(\d+) smem +\d+ warps/SM +(\d+) mma +(\d+) +(\S+) "
                      r".*K=(\d+)", result.stdout, re.M)
    # 7 launches (apply, statistics; backward statistics, dh with batch statistics and
    # frozen BN, dx, dweight) x 2 layouts x 2 shapes x 2 architectures on tensor cores;
    # beside them only the reductions (reductions.py), on the budget too (--budget).
    rows = [row for row in rows if row[6].startswith("banded_")]
    assert len(rows) == 56, result.stdout
    assert {row[6].rsplit(".", 1)[1] for row in rows} == {"forward_apply", "forward_stats", "backward_stats",
                                                          "backward_dh", "backward_dx", "backward_dw"}
    for arch, regs, spill_st, spill_ld, warps, mma, kernel, k in rows:
        where = f"sm_{arch} {kernel} k={k}"
        assert int(spill_st) == 0 and int(spill_ld) == 0, where
        assert int(regs) <= 128 and int(warps) >= 16, where
        assert int(mma) > 0, where


@pytest.mark.slow
@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton without its NVIDIA backend and ptxas")
def test_every_autotune_config_meets_the_budget_at_the_key_shapes():
    # The tensor-core kernels' configs (and the reductions'); the CUDA-core convolutions'
    # autotuning configs may spill at these shapes (some do, at 255 registers): the
    # autotuner times them on a GPU, and their fixed defaults are held to no spills above.
    result = run_compile_check("--key-shapes", "--all-configs", "--budget", "--arch", "90", "--arch", "80")
    assert "FAILED" not in result.stdout, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("sm_") and " kernels_" not in line]
    assert len(lines) > 56 and not [line for line in lines if "OVER BUDGET" in line], result.stdout
