"""The resource budget of the Triton tensor-core kernels, checked without a GPU: the eval
forward of the key shapes (bfloat16, batch 128, 32x32, C = 768 k = 7 and C = 1536 k = 9,
both layouts) compiled for sm_90 and sm_80 (triton.compile and Triton's own ptxas, see
triton/compile_check.py) has no spills, at most 128 registers a thread at its 4 warps
(so at least 16 warps resident per SM), and mma (sm_80, sm_90 below M = 64) or wgmma
instructions in its PTX."""

import re

import pytest

from test_triton_compile import _has_nvidia_backend, run_compile_check


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton without its NVIDIA backend and ptxas")
def test_key_shapes_meet_the_budget_on_sm90_and_sm80():
    result = run_compile_check("--key-shapes", "--budget", "--arch", "90", "--arch", "80", timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = re.findall(r"^sm_(\d+) regs +(\d+) spill +(\d+)/ *(\d+) smem +\d+ warps/SM +(\d+) mma +(\d+) +(\S+) "
                      r".*K=(\d+)", result.stdout, re.M)
    # 2 layouts x 2 shapes x 2 architectures, every one a tensor-core kernel.
    assert len(rows) == 8, result.stdout
    for arch, regs, spill_st, spill_ld, warps, mma, kernel, k in rows:
        where = f"sm_{arch} {kernel} k={k}"
        assert kernel.startswith("banded_") and kernel.endswith(".forward_apply"), where
        assert int(spill_st) == 0 and int(spill_ld) == 0, where
        assert int(regs) <= 128 and int(warps) >= 16, where
        assert int(mma) > 0, where


@pytest.mark.slow
@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton without its NVIDIA backend and ptxas")
def test_every_autotune_config_meets_the_budget_at_the_key_shapes():
    result = run_compile_check("--key-shapes", "--all-configs", "--budget", "--arch", "90", "--arch", "80")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.rstrip().endswith("0 failed")
