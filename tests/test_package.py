"""The package imports on a machine whose extension lacks CUDA, and says what is missing."""

import subprocess
import sys

import pytest
import torch

import convmixer_kernels as cmk
from convmixer_kernels import _extension


def test_extension_built_and_cpu_backend_available():
    # CI builds the extension: a missing build must fail here, not skip the CPU tests.
    assert _extension.load() is not None, _extension.load_error()
    assert cmk.available_backends("cpu") == ["cpu", "eager"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only build")
def test_cuda_backends_say_why_they_are_missing():
    reasons = cmk.unavailable_backends("cuda")
    assert "cuda" in reasons and "triton" in reasons
    if not _extension.cuda_compiled():
        assert "built without CUDA" in reasons["cuda"] or "did not load" in reasons["cuda"]
    assert cmk.available_backends("cuda") == ["eager"]


def test_auto_on_a_device_without_fused_backend_warns_once():
    code = (
        "import warnings, torch, convmixer_kernels.ops.backends as b\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    assert b.resolve('auto', torch.device('meta'), torch.float32) == 'eager'\n"
        "    b.resolve('auto', torch.device('meta'), torch.float32)\n"
        "assert len(w) == 1 and 'using the slow eager backend' in str(w[0].message), [str(x.message) for x in w]\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "CONVMIXER_KERNELS_QUIET_FALLBACK"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_import_without_triton():
    # The Triton backend is imported lazily: the package works where triton is absent.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import convmixer_kernels as c\n"
        "print(c.available_backends('cpu'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "cpu" in out.stdout
