"""The backend registry (ops/backends): one class per backend with its declarations,
register_backend, and refusals that list every backend's reason."""

import pytest
import torch

import convmixer_kernels as cmk
from convmixer_kernels.ops import backends
from convmixer_kernels.ops.backends.base import Backend


class _Declared(Backend):
    NAME = "declared"
    DEVICES = ("meta",)
    DTYPES = (torch.float32,)
    KERNEL_SIZES = range(1, 8)


def test_every_backend_declares_itself():
    assert backends.backend_names() == ("cuda", "triton", "cpu", "eager")
    for name in backends.backend_names():
        backend = backends.get_backend(name)
        assert backend.NAME == name and backend.DTYPES
    assert backends.PRIORITY == {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


def test_declarations_give_the_reasons():
    b = _Declared()
    assert "runs on meta tensors, not cpu" in b.why_unavailable(torch.device("cpu"), torch.float32)
    assert "support float32, not float16" in b.why_unavailable(torch.device("meta"), torch.float16)
    assert b.why_unavailable(torch.device("meta"), torch.float32) is None
    assert "kernel sizes 1..7, not 9" in b.why_not_kernel_size(9)


def test_cuda_backend_asks_the_extension_about_the_devices_shared_memory(monkeypatch):
    # csrc/cuda/binding.cpp's cuda_shared_memory_shortfall, once per (device, dtype, k); the
    # emulated kernels run the real one (tests/ops/backends/test_cuda_emulated.py)
    from convmixer_kernels import _extension
    from convmixer_kernels.ops.backends import cuda

    asked = []

    class Extension:
        @staticmethod
        def cuda_shared_memory_shortfall(device, dtype, k):
            asked.append((device, dtype, k))
            return "the backward's grad_h pass needs too much" if (dtype, k) == ("float32", 31) else ""

    monkeypatch.setattr(_extension, "load", lambda: Extension)
    cuda._shared_memory_shortfall.cache_clear()
    try:
        b = backends.get_backend("cuda")
        dev = torch.device("cuda", 1)
        assert b.why_not_on_device(dev, torch.float32, 31) == "the backward's grad_h pass needs too much"
        assert b.why_not_on_device(dev, torch.float32, 31) == "the backward's grad_h pass needs too much"
        assert b.why_not_on_device(dev, torch.bfloat16, 31) is None
        assert asked == [(1, "float32", 31), (1, "bfloat16", 31)]
    finally:
        cuda._shared_memory_shortfall.cache_clear()


def test_register_backend_and_by_name_errors():
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend(backends.get_backend("cpu"))
    with pytest.raises(TypeError, match="must be a Backend"):
        backends.register_backend(object())
    backends.register_backend(_Declared())
    try:
        assert "declared" in backends.backend_names()
        assert backends.why_unavailable("declared", torch.device("meta"), torch.float32, kernel_size=9) is not None
        with pytest.raises(RuntimeError) as info:
            backends.resolve("declared", torch.device("cpu"), torch.float32)
        # the refusal names the backend's reason, those that can run, and every other's reason
        text = str(info.value)
        runnable = [n for n in backends.backend_names() if n != "declared"
                    and backends.why_unavailable(n, torch.device("cpu"), torch.float32) is None]
        assert "cpu" in runnable and "eager" in runnable
        assert "runs on meta tensors, not cpu" in text and f"Backends that can: {', '.join(runnable)}" in text
        assert "cuda: the cuda backend runs on cuda tensors" in text
    finally:
        backends.unregister_backend("declared")
    assert "declared" not in backends.backend_names()


def test_auto_falls_back_with_every_reason(monkeypatch):
    monkeypatch.delenv("CONVMIXER_KERNELS_QUIET_FALLBACK", raising=False)
    backends._warned_fallback.clear()
    with pytest.warns(RuntimeWarning, match=r"cuda: .*; triton: .*; cpu: .*using the slow eager backend"):
        assert backends.resolve("auto", torch.device("meta"), torch.float32) == "eager"
    assert cmk.available_backends("meta") == ["eager"]
