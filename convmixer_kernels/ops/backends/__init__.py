"""The backends of the mixer_block op: one class per backend, one module each (base.py
says what a backend is), one registry, and how a call picks its backend.

  eager.py   stock PyTorch ops on top of reference.py; anywhere, the fallback
  cpu.py     the C++ kernels of csrc/cpu
  cuda.py    the CUDA C++ kernels of csrc/cuda
  triton.py  the Triton kernels of convmixer_kernels/triton

PRIORITY lists, per device type, the fused backends "auto" chooses among, fastest first;
eager is the fallback everywhere. Between several available ones (cuda and triton on a
GPU) ops/auto_select.py decides per shape. A backend registered with `register_backend`
(the emulated CUDA kernels of the tests) is used by name.
"""

import os
import warnings
from typing import Dict, List, Optional, Sequence

import torch

from .. import auto_select
from .base import Backend
from .cpu import CpuBackend
from .cuda import CudaBackend
from .eager import EagerBackend
from .triton import TritonBackend

PRIORITY = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}
FALLBACK = "eager"

_REGISTRY: Dict[str, Backend] = {}


def register_backend(backend: Backend, replace: bool = False) -> Backend:
    """Adds `backend` under backend.NAME, so mixer_block(..., backend=NAME) and the
    availability functions know it. A name already taken raises unless replace=True."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend: backend must be a Backend, got {type(backend).__name__}")
    if not backend.NAME or backend.NAME == "auto":
        raise ValueError(f"register_backend: a backend needs a NAME other than 'auto', got {backend.NAME!r}")
    if backend.NAME in _REGISTRY and not replace:
        raise ValueError(f"register_backend: backend {backend.NAME!r} is already registered")
    _REGISTRY[backend.NAME] = backend
    return backend


def unregister_backend(name: str) -> None:
    """Removes a backend that register_backend added."""
    if name not in _REGISTRY:
        raise ValueError(f"unregister_backend: no backend {name!r} is registered")
    del _REGISTRY[name]


for _backend in (CudaBackend(), TritonBackend(), CpuBackend(), EagerBackend()):
    register_backend(_backend)


def backend_names() -> tuple:
    """Every registered backend's name."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"mixer_block: backend must be 'auto' or one of {backend_names()}, got {name!r}")
    return _REGISTRY[name]


def why_unavailable(name: str, device: torch.device, dtype: torch.dtype, synced: bool = False,
                    kernel_size: Optional[int] = None) -> Optional[str]:
    """None if backend `name` can run a call on `device` with `dtype` (and kernel size,
    synchronized statistics, where given), else why not."""
    backend = get_backend(name)
    reason = backend.why_unavailable(device, dtype)
    if reason is None and kernel_size is not None:
        reason = backend.why_not_kernel_size(kernel_size) or backend.why_not_on_device(device, dtype, kernel_size)
    if reason is None and synced:
        reason = backend.why_no_sync()
    return reason


def _reasons(names: Sequence[str], device, dtype, synced, kernel_size) -> Dict[str, str]:
    reasons = {name: why_unavailable(name, device, dtype, synced, kernel_size) for name in names}
    return {name: why for name, why in reasons.items() if why is not None}


def available_backends(device="cpu", dtype: torch.dtype = torch.float32) -> List[str]:
    """The backends that can run the mixer block on `device` for `dtype`, fastest first."""
    device = torch.device(device)
    order = PRIORITY.get(device.type, ()) + (FALLBACK,)
    return [name for name in order if why_unavailable(name, device, dtype) is None]


def unavailable_backends(device="cpu", dtype: torch.dtype = torch.float32) -> Dict[str, str]:
    """Each registered backend that cannot run on `device`, with the reason."""
    return _reasons(backend_names(), torch.device(device), dtype, False, None)


def _describe(reasons: Dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in reasons.items())


_warned_fallback = set()


# Evaluated once at trace time under torch.compile: the answer depends only on constants.
@torch.compiler.assume_constant_result
def resolve(name: str, device: torch.device, dtype: torch.dtype,
            problem: Optional[auto_select.Problem] = None, synced: bool = False,
            kernel_size: Optional[int] = None) -> str:
    """The concrete backend for a call: `name` itself after checking it can run, or for
    "auto" the fastest available one for `problem` (ops/auto_select.py), warning once
    when only the eager fallback is left. synced: a call with statistics synchronized
    across processes, which only backends with the pieces of ops/sync.py can run. Either
    refusal lists every backend's reason."""
    if name != "auto":
        reason = why_unavailable(name, device, dtype, synced, kernel_size)
        if reason is not None:
            others = _reasons([n for n in backend_names() if n != name], device, dtype, synced, kernel_size)
            runnable = [n for n in backend_names() if n != name and n not in others]
            raise RuntimeError(
                f"mixer_block: backend {name!r} cannot run here: {reason}. Backends that can: "
                f"{', '.join(runnable) or 'none'}" + (f"; the others: {_describe(others)}" if others else ""))
        return name
    candidates = PRIORITY.get(device.type, ())
    refused = _reasons(candidates, device, dtype, synced, kernel_size)
    available = [get_backend(n) for n in candidates if n not in refused]
    if available:
        return auto_select.decide(available, problem).backend
    key = (device.type, dtype, synced)
    if key not in _warned_fallback and not os.environ.get("CONVMIXER_KERNELS_QUIET_FALLBACK"):
        _warned_fallback.add(key)
        others = _reasons([n for n in backend_names() if n != FALLBACK], device, dtype, synced, kernel_size)
        warnings.warn(
            f"convmixer_kernels: no fused backend for {device.type} {dtype} ({_describe(others)}); "
            "using the slow eager backend",
            RuntimeWarning,
            stacklevel=3,
        )
    return FALLBACK


def explain_auto(x_shape: Sequence[int], kernel_size: int, dtype: torch.dtype = torch.bfloat16,
                 layout: str = "nchw", training: bool = False, device="cuda", activation: str = "gelu",
                 measure: bool = False) -> str:
    """Which backend backend="auto" takes for a block on an input of x_shape, and why.

    With measure=True a shape that has no decision yet is timed now (as its first call
    would be); otherwise the answer says what the first call will do.
    """
    device = torch.device(device)
    n, c, h, w = (int(s) for s in x_shape)
    problem = auto_select.Problem(str(device), n, c, h, w, int(kernel_size), dtype, layout, bool(training),
                                  activation)
    fused = [get_backend(name) for name in available_backends(device, dtype) if name != FALLBACK]
    return auto_select.explain(fused or [get_backend(FALLBACK)], problem, measure)
