"""The Triton kernels compile for sm_90 on a machine without a GPU.

The interpreter tests run the kernels' Python but never lower it; this runs the real
compiler (triton.compile to PTX and cubin, with Triton's own ptxas) over every launch
the backend makes, for a sample of kernel sizes and dtypes, so a kernel that would fail
to compile on an H100 fails here. `python -m tools.triton_compile_check`
runs the whole sweep and prints registers, spills and shared memory per kernel."""

import os
import subprocess
import sys

import pytest

from tests.harness import ROOT


def _has_nvidia_backend() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return os.path.exists(get_ptxas(90).path)
    except Exception:
        return False


def run_compile_check(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """python -m tools.triton_compile_check ARGS, outside the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    return subprocess.run([sys.executable, "-m", "tools.triton_compile_check", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton without its NVIDIA backend and ptxas")
def test_every_launch_compiles_for_sm90():
    result = run_compile_check("--arch", "90", "--k", "2,9", "--dtypes", "float32,bfloat16", "--activations", "gelu")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("sm_90")]
    # Every pass of both layouts was recorded and compiled: 6 CUDA-core kernels and the
    # 6 bfloat16 tensor-core ones (apply, statistics, the 4 backward passes) per layout,
    # and the 2 reductions.
    kernels = {line.split()[12] for line in lines}
    assert len(kernels) == 26, sorted(kernels)
    assert result.stdout.rstrip().endswith("0 failed")
