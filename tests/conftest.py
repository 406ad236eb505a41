import functools
import importlib.util
import os

# The eager fallback warns once per device; the tests ask for backends by name.
os.environ.setdefault("CONVMIXER_KERNELS_QUIET_FALLBACK", "1")

# Triton reads TRITON_INTERPRET when it is first imported, and importing torch's compiler
# (which convmixer_kernels and the tests do) imports triton: set it before any test
# module is collected, so the Triton backend runs under its interpreter on a CPU machine.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

if torch.cuda.is_available():
    # cuDNN convolutions and cuBLAS matmuls default to TF32, which rounds float32 eager
    # baselines (and the reference on the GPU) to ~1e-3: far above the 1e-5 bounds.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

# On a GPU machine that is meant to run every GPU path (scripts/gpu_check.sh sets it), a
# gpu test fails where it would otherwise skip for a missing GPU, CUDA build or triton.
EXPECT_CUDA = os.environ.get("CONVMIXER_KERNELS_EXPECT_CUDA") == "1"


@functools.lru_cache(maxsize=None)
def _gpu_stack_missing():
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    from convmixer_kernels import _extension

    reason = _extension.cuda_missing_reason()
    if reason is not None:
        return reason
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Runs before the skip marks are evaluated, so a gpu test cannot pass by skipping.
    if EXPECT_CUDA and item.get_closest_marker("gpu") is not None and _gpu_stack_missing():
        pytest.fail(f"CONVMIXER_KERNELS_EXPECT_CUDA=1 but {_gpu_stack_missing()}", pytrace=False)
