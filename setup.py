"""Builds convmixer_kernels._C: the op schema and CPU kernels always, the CUDA kernels
only where torch has CUDA and nvcc is found.

Environment overrides:
  CONVMIXER_KERNELS_FORCE_CUDA=1   build the CUDA part even if torch sees no GPU (needs nvcc
                                   and a CUDA build of torch)
  CONVMIXER_KERNELS_SKIP_CUDA=1    never build the CUDA part
  CONVMIXER_KERNELS_CUDA_ARCHS     compute capabilities, ';'-separated (default "8.0;9.0")
  CONVMIXER_KERNELS_CPU_ARCH       -march for the CPU kernels (default "native"; "none" for
                                   a portable build)
  MAX_JOBS                         parallel compile jobs (read by torch's BuildExtension)

Build against the installed torch: pip install --no-build-isolation .
"""

import glob
import os
import shutil

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def cuda_build_wanted():
    if env_flag("CONVMIXER_KERNELS_SKIP_CUDA"):
        return False, "CONVMIXER_KERNELS_SKIP_CUDA is set"
    if torch.version.cuda is None:
        return False, "this torch has no CUDA"
    if CUDA_HOME is None or shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is None:
        return False, "nvcc was not found (set CUDA_HOME)"
    if env_flag("CONVMIXER_KERNELS_FORCE_CUDA") or torch.cuda.is_available():
        return True, "torch has CUDA and nvcc is at " + CUDA_HOME
    return False, "no GPU visible (set CONVMIXER_KERNELS_FORCE_CUDA=1 to build anyway)"


def cuda_arch_flags(archs):
    flags = []
    for arch in archs.replace(",", ";").split(";"):
        arch = arch.strip()
        if not arch:
            continue
        num = arch.replace(".", "")
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    return flags


def extension():
    cpu_arch = os.environ.get("CONVMIXER_KERNELS_CPU_ARCH", "native")
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    if cpu_arch != "none":
        cxx.append(f"-march={cpu_arch}")
    sources = ["csrc/mixer_block.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    with_cuda, why = cuda_build_wanted()
    print(f"convmixer_kernels: CUDA kernels {'built' if with_cuda else 'skipped'}: {why}")
    if not with_cuda:
        return CppExtension(
            "convmixer_kernels._C",
            sources,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    archs = os.environ.get("CONVMIXER_KERNELS_CUDA_ARCHS", "8.0;9.0")
    cuda_sources = ["csrc/cuda_bindings.cpp"] + sorted(glob.glob("csrc/cuda/*.cu"))
    defines = ["-DCONVMIXER_KERNELS_WITH_CUDA", f'-DCONVMIXER_KERNELS_CUDA_ARCH_LIST="{archs}"']
    return CUDAExtension(
        "convmixer_kernels._C",
        sources + cuda_sources,
        extra_compile_args={
            "cxx": cxx + defines,
            "nvcc": ["-O3", "-std=c++17", "-lineinfo"] + cuda_arch_flags(archs),
        },
        extra_link_args=["-fopenmp"],
    )


setup(
    packages=find_packages(include=["convmixer_kernels", "convmixer_kernels.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
