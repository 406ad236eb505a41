"""Compile check of the CUDA sources, so that a CPU-only machine catches a broken kernel.

Every csrc/cuda/*.cu is compiled by nvcc for sm_80 and sm_90 (the default
CONVMIXER_KERNELS_CUDA_ARCHS) when nvcc is on the PATH; csrc/cuda/binding.cpp, which
needs torch's headers, is syntax-checked by the host compiler against the installed torch.
The sources compile in parallel (one nvcc per core); each is a few minutes of CPU time.
"""

import concurrent.futures
import glob
import os
import shutil
import subprocess
import sysconfig

import pytest
from tests.harness import ROOT

CSRC = os.path.join(ROOT, "csrc")
CUDA_SOURCES = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
ARCH_FLAGS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
NVCC = shutil.which("nvcc")

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")


def _nvcc(source, out_dir):
    obj = os.path.join(out_dir, os.path.basename(source) + ".o")
    cmd = [NVCC, "-c", "-std=c++17", "-O3", "-Wno-deprecated-gpu-targets", *ARCH_FLAGS, "-I", CSRC, source, "-o", obj]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory):
    """Compiles all sources once, in parallel; {source: (returncode, output)}."""
    out_dir = str(tmp_path_factory.mktemp("nvcc"))
    workers = max(1, min(len(CUDA_SOURCES), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {src: pool.submit(_nvcc, src, out_dir) for src in CUDA_SOURCES}
        return {src: f.result() for src, f in futures.items()}


def test_cuda_sources_exist():
    names = {os.path.basename(p) for p in CUDA_SOURCES}
    for dtype in ("f32", "f16", "bf16"):
        assert f"forward_{dtype}.cu" in names and f"backward_{dtype}.cu" in names
    assert "reduce.cu" in names


@needs_nvcc
@pytest.mark.xdist_group("nvcc")  # one worker compiles them all once (pytest -n ... --dist loadgroup)
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=os.path.basename)
def test_nvcc_compiles(source, nvcc_results):
    returncode, output = nvcc_results[source]
    assert returncode == 0, f"nvcc failed on {os.path.relpath(source, ROOT)}:\n{output[-8000:]}"
    # A warning in a kernel source is a bug waiting for a GPU; torch-free sources print none.
    assert "warning" not in output.lower(), output[-8000:]


def _torch_include_dirs():
    from torch.utils.cpp_extension import include_paths

    return include_paths()


def _cuda_include_dir():
    candidates = [os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(NVCC))), "include")]
    candidates += [os.path.join(os.environ[v], "include") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += ["/usr/local/cuda/include"]
    for inc in candidates:
        if os.path.exists(os.path.join(inc, "cuda_runtime_api.h")):
            return inc
    return None


@needs_nvcc
def test_cuda_bindings_syntax(tmp_path):
    """csrc/cuda/binding.cpp against the installed torch's headers and the CUDA headers.

    A CPU build of torch ships c10/cuda but not the one header its CMake generates,
    c10/cuda/impl/cuda_cmake_macros.h; a stand-in defining its one macro is supplied then.
    """
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    cxx = shutil.which(cxx.split()[0]) or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler found")
    cuda_inc = _cuda_include_dir()
    if cuda_inc is None:
        pytest.skip("the CUDA headers (cuda_runtime_api.h) were not found next to nvcc")
    torch_inc = _torch_include_dirs()
    needed = ["c10/cuda/CUDAGuard.h", "c10/cuda/CUDAStream.h", "c10/cuda/CUDAException.h"]
    missing = [h for h in needed if not any(os.path.exists(os.path.join(d, h)) for d in torch_inc)]
    if missing:
        pytest.skip(f"this torch ships no {', '.join(missing)} (a CPU wheel without c10/cuda headers)")
    stub_dir = tmp_path / "stub"
    generated = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any(os.path.exists(os.path.join(d, generated)) for d in torch_inc):
        (stub_dir / "c10/cuda/impl").mkdir(parents=True)
        (stub_dir / generated).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = [cxx, "-fsyntax-only", "-std=c++17", "-Wall", "-Wextra", "-DCONVMIXER_KERNELS_WITH_CUDA", "-I", CSRC]
    for inc in [*torch_inc, cuda_inc, str(stub_dir)]:
        cmd += ["-isystem", inc]
    cmd.append(os.path.join(CSRC, "cuda", "binding.cpp"))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"csrc/cuda/binding.cpp does not compile:\n{output[-8000:]}"
    assert "warning" not in output.lower(), output[-8000:]
