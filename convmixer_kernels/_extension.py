"""Loads the compiled extension, convmixer_kernels._C, without making it a hard
requirement of `import convmixer_kernels`: a missing or CUDA-less build only makes the
`cpu` / `cuda` backends unavailable, with the reason reported by `available_backends`.
"""

import functools
from typing import Dict, Optional


@functools.lru_cache(maxsize=None)
def load():
    """The extension module, or None where it was not built (see `load_error`)."""
    try:
        from convmixer_kernels import _C  # noqa: F401  registers torch.ops.convmixer_kernels.*
    except ImportError:
        return None
    return _C


@functools.lru_cache(maxsize=None)
def load_error() -> Optional[str]:
    try:
        from convmixer_kernels import _C  # noqa: F401
    except ImportError as exc:
        return (
            f"the compiled extension convmixer_kernels._C did not load ({exc}); build it with "
            "`pip install --no-build-isolation -e .`"
        )
    return None


def cuda_compiled() -> bool:
    ext = load()
    return bool(ext is not None and ext.cuda_compiled)


def cuda_missing_reason() -> Optional[str]:
    """Why the CUDA kernels are not in the extension, or None when they are."""
    if load() is None:
        return load_error()
    if not cuda_compiled():
        return (
            "the extension was built without CUDA (torch without CUDA, no nvcc, or "
            "CONVMIXER_KERNELS_SKIP_CUDA); rebuild on a CUDA machine with "
            "`pip install --no-build-isolation -e .`"
        )
    return None


def cpu_capability() -> Optional[str]:
    """The instruction-set level the CPU kernels run at: 'baseline' (any x86-64),
    'avx2' (AVX2 + FMA), 'avx512', 'avx512_bf16' (AVX-512 BF16 dot products: Zen 4),
    'amx' (AMX tiles: Sapphire Rapids) or 'custom' (a CONVMIXER_KERNELS_CPU_ARCH build); the
    best level this CPU supports unless CONVMIXER_KERNELS_CPU_CAPABILITY names one. None
    where the extension did not load."""
    ext = load()
    return None if ext is None else ext.cpu_capability()


def cpu_capabilities() -> Dict[str, bool]:
    """Every compiled CPU level, best first, with whether this CPU can run it."""
    ext = load()
    return {} if ext is None else dict(ext.cpu_capabilities())
