"""Builds convmixer_kernels._C: the op schema and CPU kernels always, the CUDA kernels
only where torch has CUDA and nvcc is found.

Environment overrides:
  CONVMIXER_KERNELS_FORCE_CUDA=1   build the CUDA part even if torch sees no GPU (needs nvcc
                                   and a CUDA build of torch)
  CONVMIXER_KERNELS_SKIP_CUDA=1    never build the CUDA part
  CONVMIXER_KERNELS_CUDA_ARCHS     compute capabilities, ';'-separated (default "8.0;9.0")
  CONVMIXER_KERNELS_CPU_LEVELS     the CPU capability levels to compile besides the baseline,
                                   ','-separated (default: every level of CPU_LEVELS on x86-64;
                                   elsewhere only the baseline)
  CONVMIXER_KERNELS_CPU_ARCH       also compile a "custom" level with -march=<this> (e.g. native),
                                   chosen first where the running CPU has its instructions
  MAX_JOBS                         parallel compile jobs (read by torch's BuildExtension)

The CPU kernels (csrc/cpu/mixer_block_cpu.cpp) are compiled once per capability level, each
into its own namespace, and csrc/cpu/dispatch.cpp picks the best level the running CPU
supports at load time (CONVMIXER_KERNELS_CPU_CAPABILITY=<level> overrides). The bindings and
the dispatcher get no ISA flags, so one build runs on every x86-64 CPU.

Build against the installed torch: pip install --no-build-isolation .
"""

import concurrent.futures
import functools
import glob
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import time

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension, include_paths
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


# x86-64 capability level -> compile flags. Every level is tuned for no particular CPU: a tuning flag must not
# change results, and GCC 12.2's -mtune=rocketlake (what -march=native gives on a Sapphire
# Rapids Xeon) miscompiled a flag test in the bindings (see tests/ops/backends/test_cpu_capability.py).
CPU_LEVELS = {
    "baseline": ["-march=x86-64", "-mtune=generic"],
    "avx2": ["-march=x86-64-v3", "-mtune=generic"],
    "avx512": ["-march=x86-64-v4", "-mtune=generic"],
    # AVX-512 plus its bf16 dot products (Zen 4 and later EPYCs): the bf16 NCHW
    # convolutions run on pairs of taps (csrc/cpu/bf16_dot_conv.h).
    "avx512_bf16": ["-march=x86-64-v4", "-mavx512bf16", "-mtune=generic"],
    # AVX-512 plus the bf16 instructions and AMX tiles of Sapphire Rapids and later Xeons:
    # the bf16 convolutions run on the tiles (csrc/cpu/amx_conv.h).
    "amx": ["-march=x86-64-v4", "-mavx512bf16", "-mamx-tile", "-mamx-bf16", "-mtune=generic"],
}
KERNEL_SOURCE = "csrc/cpu/mixer_block_cpu.cpp"
CXX_FLAGS = ["-O3", "-std=c++20", "-fopenmp"]  # torch 2.13's headers need C++20


@functools.lru_cache(maxsize=None)
def compiler_accepts(flags, level):
    """Whether the C++ compiler knows a level's flags (GCC before 11 lacks -mamx-tile); a
    level it does not know is skipped, and said so once."""
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    cmd = cxx.split() + list(flags) + ["-x", "c++", "-c", "-o", os.devnull, "-"]
    try:
        ok = subprocess.run(cmd, input="int main() { return 0; }\n", capture_output=True, text=True).returncode == 0
    except OSError:
        ok = False
    if not ok:
        print(f"convmixer_kernels: CPU level {level} skipped: the compiler does not accept {' '.join(flags)}")
    return ok


def cpu_levels():
    """The (name, flags) of each capability level to compile, baseline first."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        levels = dict(CPU_LEVELS)
    else:
        levels = {"baseline": []}
    wanted = os.environ.get("CONVMIXER_KERNELS_CPU_LEVELS")
    if wanted:
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        unknown = sorted(set(names) - set(levels))
        if unknown:
            raise SystemExit(f"CONVMIXER_KERNELS_CPU_LEVELS: unknown levels {unknown}; known: {sorted(levels)}")
        levels = {n: f for n, f in levels.items() if n == "baseline" or n in names}
    levels = {n: f for n, f in levels.items() if n == "baseline" or compiler_accepts(tuple(f), n)}
    arch = os.environ.get("CONVMIXER_KERNELS_CPU_ARCH")
    if arch:
        levels["custom"] = [f"-march={arch}", "-mtune=generic"]
    return list(levels.items())


class BuildExtensionWithCpuLevels(BuildExtension):
    """torch's BuildExtension, plus the CPU kernels compiled once per capability level,
    beside torch's own compile (ninja runs the sources, a thread pool the levels) and
    linked after the sources, baseline first: where levels share an inline function from
    a header (std::, c10::), the linker keeps the first copy, which any CPU runs."""

    def build_extensions(self):
        workers = max(1, int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            pending = self._start_cpu_levels(pool)
            for ext in self.extensions:
                ext.extra_objects = [obj for _, obj, _, _ in pending] + list(ext.extra_objects or [])
            link = self.compiler.link_shared_object

            def link_after_levels(*args, **kwargs):
                self._finish_cpu_levels(pending)
                return link(*args, **kwargs)

            self.compiler.link_shared_object = link_after_levels
            try:
                super().build_extensions()
            finally:
                self.compiler.link_shared_object = link

    def _start_cpu_levels(self, pool):
        """[(level, object path, future or None where the object is up to date, flags)]"""
        out_dir = os.path.join(self.build_temp, "cpu_levels")
        os.makedirs(out_dir, exist_ok=True)
        cxx = os.environ.get("CXX") or self.compiler.compiler_cxx[0]
        common = CXX_FLAGS + ["-fPIC", "-c", os.path.join(ROOT, KERNEL_SOURCE), "-DTORCH_EXTENSION_NAME=_C",
                              f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
        common += [f"-I{p}" for p in include_paths() + [sysconfig.get_paths()["include"]]]
        inputs = glob.glob(os.path.join(ROOT, "csrc", "cpu", "*")) + glob.glob(os.path.join(ROOT, "csrc", "*.h"))
        newest_input = max(os.path.getmtime(f) for f in inputs)
        pending = []
        for name, flags in cpu_levels():
            cmd = [cxx] + common + flags + [f"-DCMK_CPU_CAPABILITY={name}"]
            # The command is in the object's name, so a change of flags is a rebuild.
            tag = hashlib.sha1(" ".join(cmd).encode()).hexdigest()[:10]
            obj = os.path.join(out_dir, f"mixer_block_cpu_{name}_{tag}.o")
            fresh = os.path.exists(obj) and os.path.getmtime(obj) > newest_input
            future = None if fresh else pool.submit(self._compile_level, name, cmd + ["-o", obj])
            pending.append((name, obj, future, flags))
        return pending

    @staticmethod
    def _compile_level(name, cmd):
        start = time.time()
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling the {name} CPU level failed:\n{' '.join(cmd)}\n{result.stderr}")
        return time.time() - start

    @staticmethod
    def _finish_cpu_levels(pending):
        for name, _, future, flags in pending:
            if future is not None:
                print(f"convmixer_kernels: CPU level {name} compiled in {future.result():.0f} s ({' '.join(flags)})")


def extension():
    level_defines = [f"-DCMK_CPU_LEVEL_{name.upper()}" for name, _ in cpu_levels() if name != "baseline"]
    cxx = CXX_FLAGS + level_defines
    sources = ["csrc/ops.cpp", "csrc/cpu/binding.cpp", "csrc/cpu/dispatch.cpp"]  # no ISA flags
    with_cuda, why = cuda_build_wanted()
    print(f"convmixer_kernels: CUDA kernels {'built' if with_cuda else 'skipped'}: {why}")
    print(f"convmixer_kernels: CPU levels {', '.join(name for name, _ in cpu_levels())}")
    if not with_cuda:
        return CppExtension(
            "convmixer_kernels._C",
            sources,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    archs = os.environ.get("CONVMIXER_KERNELS_CUDA_ARCHS", "8.0;9.0")
    cuda_sources = ["csrc/cuda/binding.cpp"] + sorted(glob.glob("csrc/cuda/*.cu"))
    defines = ["-DCONVMIXER_KERNELS_WITH_CUDA"]
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
    cmdclass={"build_ext": BuildExtensionWithCpuLevels},
)
