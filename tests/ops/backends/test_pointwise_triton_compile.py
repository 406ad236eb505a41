"""The Triton GEMM-with-epilogue kernel compiles for sm_90 on a machine without a GPU (the
real compiler and ptxas, as tests/test_triton_compile.py does for the mixer kernels), for
each dtype and both passes, without register spills."""

import os
import subprocess
import sys

import pytest

from tests.harness import ROOT
from tests.ops.backends.test_triton_compile import _has_nvidia_backend

SCRIPT = """
import torch
from convmixer_kernels.triton import gemm_epilogue as g
from tools import triton_compile_check as compile_check

def calls():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for act in ("gelu", "gelu_tanh", "relu", "silu"):
            x, w, b = torch.randn(70, 40).to(dtype), torch.randn(67, 40).to(dtype), torch.randn(67).to(dtype)
            g._launch(x, w, b, torch.rand(67), torch.randn(67), act, False)
            g._launch(x, w, None, None, None, act, True)

launches = compile_check.record_launches(calls)
assert len(launches) == 24, len(launches)
for launch in launches:
    report = compile_check.compile_launch(launch, 90)
    print(launch.describe(), "registers", report.registers, "spills", report.spill_stores, report.spill_loads)
    assert report.spill_stores == 0 and report.spill_loads == 0, launch.describe()
"""


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton without its NVIDIA backend and ptxas")
def test_gemm_epilogue_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = ROOT
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
