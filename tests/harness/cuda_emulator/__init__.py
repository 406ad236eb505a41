"""The cuda backend's kernels (csrc/cuda), unchanged, run on CPU tensors.

`build()` compiles every csrc/cuda source with g++ against the C++ beside this file (a
CPU stand-in for the CUDA runtime, the warp collectives and the PTX instructions the
kernels use; see device.h) into a shared library, cached under build/cuda_emulator/ by a
hash of the sources. `EmulatedCudaBackend` wraps its C interface (api.cpp) in a Backend (ops/backends/base.py), allocating
outputs and workspaces as csrc/cuda/binding.cpp does, with two additions: every buffer
the kernels see lies between guard bands of 0xff bytes (NaN in every float dtype), so a
read past a tensor shows up as NaN in the results and a write past one as a changed
guard; and the workspaces start as NaN too.

This checks the kernels' indexing, tiling, fragment layouts, reductions, barriers and
cp.async pipeline (copies land at their wait, and a read before it is reported) on a
machine without a GPU; `Emulator.configure(device=...)` picks the shared memory the
launchers plan their pipeline depth for. It says nothing about speed, and the tensor cores' rounding is
modelled, not measured: tests/ops/backends/test_cuda_gpu.py is still the word on a GPU.
"""

import concurrent.futures
import ctypes
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
from typing import Optional

import torch

from convmixer_kernels.conventions import ACTIVATION_CODES, CHANNELS_LAST, layout_of
from convmixer_kernels.ops.backends.base import Backend
from tests.harness import ROOT

CSRC = os.path.join(ROOT, "csrc")
EMULATOR = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(ROOT, "build", "cuda_emulator")
SOURCES = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu"))) + [
    os.path.join(EMULATOR, "runtime.cpp"),
    os.path.join(EMULATOR, "api.cpp"),
    os.path.join(EMULATOR, "selftest.cpp"),
]
FLAGS = [
    "-std=c++17", "-O2", "-fPIC", "-DCONVMIXER_KERNELS_CUDA_EMULATOR",
    "-I", os.path.join(EMULATOR, "include"), "-I", CSRC,
    "-Wall", "-Wextra", "-Wno-unknown-pragmas",  # nvcc's #pragma unroll
]

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ORDERS = {"ascending": 0, "descending": 1, "shuffled": 2}
# shared memory per multiprocessor and the most one block may opt into, in bytes; each is
# its own device index (the launchers cache function attributes per device)
DEVICES = {"h100": (228 * 1024, 227 * 1024), "a100": (164 * 1024, 163 * 1024), "a10": (100 * 1024, 99 * 1024)}
GUARD_BYTES = 256  # on each side of every buffer; a multiple of 16 keeps 16-byte alignment


def compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "g++"))


def _source_hash() -> str:
    h = hashlib.sha256(" ".join(FLAGS).encode())
    # everything the build can include: csrc/cuda, the emulator, and csrc's shared headers
    inputs = glob.glob(os.path.join(CSRC, "*.h")) + [
        p for d in (os.path.join(CSRC, "cuda"), EMULATOR) for p in glob.glob(os.path.join(d, "**", "*"), recursive=True)
        if os.path.isfile(p) and not p.endswith((".py", ".pyc"))
    ]
    for path in sorted(inputs):
        h.update(path.encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def build() -> str:
    """The path of the emulator library for the current sources, compiling it if needed
    (one g++ per core; about 20 s of CPU time)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++, or $CXX) to build the CUDA emulator")
    out_dir = os.path.join(BUILD_DIR, _source_hash())
    lib = os.path.join(out_dir, "libcuda_emulator.so")
    if os.path.exists(lib):
        return lib
    os.makedirs(out_dir, exist_ok=True)
    # pytest-xdist workers build at the same time: one compiles, the others wait for its library.
    with open(os.path.join(out_dir, "build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(lib):
            _compile(cxx, out_dir, lib)
    return lib


def _compile(cxx: str, out_dir: str, lib: str) -> None:
    def compile_one(src):
        obj = os.path.join(out_dir, os.path.basename(src) + ".o")
        lang = ["-x", "c++"] if src.endswith(".cu") else []
        proc = subprocess.run([cxx, *FLAGS, *lang, "-c", src, "-o", obj], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {os.path.relpath(src, ROOT)} for the emulator failed:\n{proc.stderr[-6000:]}")
        return obj, proc.stderr

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        results = list(pool.map(compile_one, SOURCES))
    warnings = "".join(err for _, err in results)
    if "warning" in warnings:
        raise RuntimeError(f"the kernels compile with warnings for the emulator:\n{warnings[-6000:]}")
    tmp = lib + f".{os.getpid()}.tmp"
    proc = subprocess.run([cxx, "-shared", "-o", tmp, *(obj for obj, _ in results)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"linking the emulator failed:\n{proc.stderr[-6000:]}")
    os.replace(tmp, lib)


class EmulatorError(RuntimeError):
    pass


class Emulator:
    """The C interface of api.cpp."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        p, i64p, i, d = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_double
        self.lib.cme_configure.argtypes = [i, i, ctypes.c_int64, ctypes.c_int64, i, ctypes.c_uint64]
        self.lib.cme_last_error.restype = ctypes.c_char_p
        self.lib.cme_shared_memory_shortfall.argtypes = [i, i]
        self.lib.cme_shared_memory_shortfall.restype = ctypes.c_char_p
        self.lib.cme_forward_train_workspace.argtypes = [i, i64p, i]
        self.lib.cme_forward_train_workspace.restype = ctypes.c_int64
        self.lib.cme_backward_workspace.argtypes = [i, i64p, i, i]
        self.lib.cme_backward_workspace.restype = ctypes.c_int64
        self.lib.cme_forward_eval.argtypes = [i, i, i64p, i, i, d] + [p] * 8
        self.lib.cme_forward_train.argtypes = [i, i, i64p, i, i, d] + [p] * 9
        self.lib.cme_backward.argtypes = [i, i, i64p, i, i, d, i] + [p] * 14
        self.lib.cme_selftest.argtypes = [ctypes.c_char_p, p]
        self.lib.cme_welford_finalize.argtypes = [p, i, i, p, p]
        self.lib.cme_attribute_calls.restype = ctypes.c_uint64
        self.configure()

    def configure(self, multiprocessors: int = 132, order: str = "ascending", seed: int = 0, device: str = "h100"):
        """How the next calls run: the multiprocessor count the kernels plan their grids
        for, the shared memory of the emulated `device` (DEVICES: the kernels choose their
        pipeline depth from it), and the order of threads between barriers and of blocks
        in a grid."""
        per_sm, optin = DEVICES[device]
        self.lib.cme_configure(list(DEVICES).index(device), multiprocessors, per_sm, optin, ORDERS[order], seed)

    def shared_memory_shortfall(self, dtype: torch.dtype, kernel_size: int) -> str:
        """Why the kernels cannot run a block of this kernel size in `dtype` on the emulated
        device (a pass needs more shared memory per block than it has), or ""."""
        return self.lib.cme_shared_memory_shortfall(DTYPE_CODES[dtype], kernel_size).decode()

    def selftest(self, name: str) -> torch.Tensor:
        """Runs one of selftest.cpp's fault kernels; its 256 outputs."""
        out = torch.zeros(256, dtype=torch.int32)
        self.check(self.lib.cme_selftest(name.encode(), ctypes.c_void_p(out.data_ptr())), name)
        return out

    def attribute_calls(self) -> int:
        """cudaFuncSetAttribute calls the kernels' launchers have made in this process."""
        return self.lib.cme_attribute_calls()

    def welford_finalize(self, partial: torch.Tensor):
        """The ordered merge of the training forward's float32 partials [slices][3][C]
        (count, mean, M2): the batch mean and biased variance per channel."""
        partial = partial.to(torch.float32).contiguous()
        slices, _, c = partial.shape
        mean, var = torch.empty(c), torch.empty(c)
        self.check(self.lib.cme_welford_finalize(ctypes.c_void_p(partial.data_ptr()), slices, c,
                                                 ctypes.c_void_p(mean.data_ptr()), ctypes.c_void_p(var.data_ptr())),
                   "welford_finalize")
        return mean, var

    def check(self, status: int, what: str):
        if status != 0:
            raise EmulatorError(f"{what}: {self.lib.cme_last_error().decode()}")


class _Guarded:
    """Buffers between guard bands, and the check that the bands are intact."""

    def __init__(self):
        self.buffers = []

    def empty(self, shape, stride, dtype, misalign: int = 0) -> torch.Tensor:
        size = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
        guard = GUARD_BYTES // dtype.itemsize
        buf = torch.empty(size + 2 * guard + misalign, dtype=dtype)
        buf.view(torch.uint8).fill_(0xFF)
        self.buffers.append((buf, guard + misalign, size))
        return buf.as_strided(shape, stride, guard + misalign)

    def copy(self, t: Optional[torch.Tensor], misalign: int = 0) -> Optional[torch.Tensor]:
        if t is None:
            return None
        out = self.empty(t.shape, t.stride(), t.dtype, misalign)
        out.copy_(t)
        return out

    def workspace(self, nbytes: int) -> torch.Tensor:
        return self.empty((nbytes,), (1,), torch.uint8)

    def check(self, what: str):
        for buf, start, size in self.buffers:
            raw = buf.view(torch.uint8)
            item = buf.element_size()
            before, after = raw[: start * item], raw[(start + size) * item:]
            for side, band in (("before", before), ("after", after)):
                if not bool((band == 0xFF).all()):
                    raise EmulatorError(f"{what} wrote {side} a {tuple(buf.shape)} {buf.dtype} buffer")


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _geometry(x: torch.Tensor):
    return (ctypes.c_int64 * 8)(*x.shape, *x.stride())


def _channels_last(x: torch.Tensor) -> bool:
    return layout_of(x) == CHANNELS_LAST


class EmulatedCudaBackend(Backend):
    """The `cuda` backend on CPU tensors, registered as "cuda_emulated" with
    convmixer_kernels.ops.register_backend. `misalign` shifts every activation-sized
    buffer by that many elements, off 16-byte alignment, which sends the kernels down
    their element-wise paths. The cuda launchers run training as one call, so there are
    no synchronized pieces (why_no_sync), as on the cuda backend."""

    NAME = "cuda_emulated"
    DEVICES = ("cpu",)
    DTYPES = tuple(DTYPE_CODES)

    def __init__(self, emulator: Emulator, misalign: int = 0):
        self.emu = emulator
        self.misalign = misalign

    def why_no_sync(self) -> Optional[str]:
        return "the emulated cuda kernels run the statistics and apply passes as one call"

    def why_not_on_device(self, device, dtype, kernel_size) -> Optional[str]:
        return self.emu.shared_memory_shortfall(dtype, kernel_size) or None

    def forward_eval(self, x, weight, bias, gamma, beta, running_mean, running_var, eps, activation):
        g = _Guarded()
        xg = g.copy(x, self.misalign)
        y = g.empty(x.shape, x.stride(), x.dtype, self.misalign)
        self.emu.check(self.emu.lib.cme_forward_eval(
            DTYPE_CODES[x.dtype], _channels_last(x), _geometry(x), weight.shape[-1], ACTIVATION_CODES[activation], eps,
            _ptr(xg), _ptr(g.copy(weight)), _ptr(g.copy(bias)), _ptr(g.copy(gamma)), _ptr(g.copy(beta)),
            _ptr(g.copy(running_mean)), _ptr(g.copy(running_var)), _ptr(y)), "forward_eval")
        g.check("forward_eval")
        return y.clone(memory_format=torch.preserve_format)

    def forward_train(self, x, weight, bias, gamma, beta, eps, activation):
        g = _Guarded()
        dtype, geo, k = DTYPE_CODES[x.dtype], _geometry(x), weight.shape[-1]
        xg = g.copy(x, self.misalign)
        y = g.empty(x.shape, x.stride(), x.dtype, self.misalign)
        mean = g.empty((x.shape[1],), (1,), torch.float32)
        var = g.empty((x.shape[1],), (1,), torch.float32)
        ws = g.workspace(self.emu.lib.cme_forward_train_workspace(dtype, geo, k))
        self.emu.check(self.emu.lib.cme_forward_train(
            dtype, _channels_last(x), geo, k, ACTIVATION_CODES[activation], eps, _ptr(xg), _ptr(g.copy(weight)),
            _ptr(g.copy(bias)), _ptr(g.copy(gamma)), _ptr(g.copy(beta)), _ptr(mean), _ptr(var), _ptr(y), _ptr(ws)),
            "forward_train")
        g.check("forward_train")
        return y.clone(memory_format=torch.preserve_format), mean.clone(), var.clone()

    def backward(self, grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, activation):
        g = _Guarded()
        dtype, geo, k = DTYPE_CODES[x.dtype], _geometry(x), weight.shape[-1]
        assert grad_out.stride() == x.stride(), "ops/mixer_block.py gives grad_out x's layout"
        xg, dy = g.copy(x, self.misalign), g.copy(grad_out, self.misalign)
        dx = g.empty(x.shape, x.stride(), x.dtype, self.misalign)
        dh = g.empty(x.shape, x.stride(), x.dtype, self.misalign)
        c = x.shape[1]
        dweight = g.empty(weight.shape, weight.stride(), torch.float32)
        dbias, dgamma, dbeta = (g.empty((c,), (1,), torch.float32) for _ in range(3))
        ws = g.workspace(self.emu.lib.cme_backward_workspace(dtype, geo, k, batch_stats))
        self.emu.check(self.emu.lib.cme_backward(
            dtype, _channels_last(x), geo, k, ACTIVATION_CODES[activation], eps, batch_stats, _ptr(dy), _ptr(xg),
            _ptr(g.copy(weight)), _ptr(g.copy(bias)), _ptr(g.copy(gamma)), _ptr(g.copy(mean)), _ptr(g.copy(var)),
            _ptr(dx), _ptr(dweight), _ptr(dbias), _ptr(dgamma), _ptr(dbeta), _ptr(ws), _ptr(dh)), "backward")
        g.check("backward")
        return (dx.clone(memory_format=torch.preserve_format), dweight.clone(), dbias.clone(), dgamma.clone(),
                dbeta.clone())
