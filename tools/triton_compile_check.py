"""Compiles every Triton kernel of the backend for NVIDIA GPUs without one, and reports
each kernel's registers, spills and shared memory.

    python -m tools.triton_compile_check               # sm_90, the default sweep
    python -m tools.triton_compile_check --arch 80 --arch 90 --k 7,9

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python on a CPU but never lowers
them, so it misses what only the compiler checks (types, constexpr use, layouts) and
says nothing about registers. Here the backend's launchers run on CPU tensors with
`JITFunction.run` replaced by a recorder, so every launch they would make (arguments,
constexprs, tile config) is captured without a GPU; each distinct launch is then
compiled for the target by triton.compile, and its PTX assembled again by the ptxas
Triton uses, with -v, for the resource counts. Autotuning is off, so the configs are the fixed defaults (tuning.py);
`--all-configs` compiles every autotuning config too.

    python -m tools.triton_compile_check --key-shapes --budget --arch 90 --arch 80

compiles the eval and training forward and the backward (batch statistics and frozen BN)
of the benchmark's key shapes (bfloat16, batch 128, 32x32, C = 768 k = 7 and C = 1536
k = 9, both layouts; recorded on meta tensors) and holds each kernel to the resource
budget: no spills, registers and shared memory that leave room for at least 16 resident
warps per SM (<= 128 registers a thread at 4 or 8 warps; not asked of the CUDA-core
convolutions, kernels_*.py, which the 16-bit backward runs by default), and, for the
tensor-core kernels (banded_*.py, banded_backward_*.py), mma or wgmma in the PTX. Both
tensor-core settings that launch kernels of their own are recorded (tuning.py).
"""

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional

if os.environ.get("TRITON_INTERPRET") == "1":
    raise RuntimeError("compile_check needs the real Triton compiler: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from convmixer_kernels.triton import backend, tuning  # noqa: E402

_POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16",
                  torch.float64: "*fp64", torch.int32: "*i32", torch.int64: "*i64"}


@dataclass
class Launch:
    fn: JITFunction
    signature: Dict[str, str]
    constexprs: Dict[str, object]
    num_warps: int
    num_stages: int

    def key(self):
        return (self.fn.__name__, self.fn.fn.__module__, tuple(self.signature.items()),
                tuple(sorted(self.constexprs.items())), self.num_warps, self.num_stages)

    def describe(self) -> str:
        dtypes = sorted({t for t in self.signature.values() if t.startswith("*")})
        consts = " ".join(f"{k}={v}" for k, v in self.constexprs.items())
        return f"{self.fn.fn.__module__.rsplit('.', 1)[-1]}.{self.fn.__name__} [{','.join(dtypes)}] {consts} " \
               f"warps={self.num_warps}"


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return _POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {value!r}")


def record_launches(calls) -> List[Launch]:
    """Runs calls() with JITFunction.run recording instead of launching, once with each
    tensor-core setting that launches kernels of its own: the default (the 16-bit forward
    on tensor cores, the backward on CUDA cores) and "all" (the backward on tensor cores
    too)."""
    launches: Dict[tuple, Launch] = {}
    original = JITFunction.run
    setting = os.environ.get(tuning.TENSOR_CORES_ENV)

    def record(self, *args, grid, warmup, **kwargs):
        num_warps = kwargs.pop("num_warps", 4)
        num_stages = kwargs.pop("num_stages", 3)
        bound = dict(zip(self.arg_names, args))
        bound.update(kwargs)
        signature, constexprs = {}, {}
        for param in self.params:
            value = bound[param.name]
            if param.is_constexpr:
                constexprs[param.name] = value
            else:
                signature[param.name] = _arg_type(value)
        launch = Launch(self, signature, constexprs, num_warps, num_stages)
        launches.setdefault(launch.key(), launch)

    JITFunction.run = record
    try:
        for value in ("1", "all"):
            os.environ[tuning.TENSOR_CORES_ENV] = value
            calls()
    finally:
        JITFunction.run = original
        if setting is None:
            os.environ.pop(tuning.TENSOR_CORES_ENV, None)
        else:
            os.environ[tuning.TENSOR_CORES_ENV] = setting
    return list(launches.values())


def backend_calls(layouts, dtypes, kernel_sizes, activations):
    """Every pass of the triton backend over the sweep, on small CPU tensors (the
    kernels are recorded, not run, so the shapes only need to be valid)."""

    def run():
        for layout, dtype, k, act in itertools.product(layouts, dtypes, kernel_sizes, activations):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(2, 8, 9, 9).to(dtype).contiguous(memory_format=fmt)
            w = torch.randn(8, 1, k, k).to(dtype)
            b, gamma, beta = (torch.randn(8).to(t) for t in (dtype, torch.float32, torch.float32))
            mean, var = torch.zeros(8), torch.ones(8)
            backend.forward_eval(x, w, b, gamma, beta, mean, var, 1e-5, act)
            backend.forward_train(x, w, b, gamma, beta, 1e-5, act)
            for batch_stats in (True, False):
                backend.backward(torch.randn_like(x), x, w, b, gamma, mean, var, 1e-5, batch_stats, act)

    return run


# The benchmark's key shapes (DESIGN.md, "GPU roofline"): (N, C, H, W, k), in bfloat16.
KEY_SHAPES = ((128, 768, 32, 32, 7), (128, 1536, 32, 32, 9))


def key_shape_calls(layouts=("nchw", "channels_last"), shapes=KEY_SHAPES, dtype=torch.bfloat16):
    """The eval and training forward and the backward (batch statistics and frozen BN) of
    the key shapes, on meta tensors (full size, no memory)."""

    def run():
        for layout, (n, c, h, w, k) in itertools.product(layouts, shapes):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            meta = dict(device="meta")
            x = torch.empty(n, c, h, w, dtype=dtype, **meta).contiguous(memory_format=fmt)
            vec = torch.empty(c, **meta)
            w, b = torch.empty(c, 1, k, k, dtype=dtype, **meta), torch.empty(c, dtype=dtype, **meta)
            backend.forward_eval(x, w, b, vec, vec, vec, vec, 1e-5, "gelu")
            backend.forward_train(x, w, b, vec, vec, 1e-5, "gelu")
            for batch_stats in (True, False):
                backend.backward(torch.empty_like(x), x, w, b, vec, vec, vec, 1e-5, batch_stats, "gelu")

    return run


def with_all_configs(launches: List[Launch]) -> List[Launch]:
    """The recorded launches of the tunable kernels once per autotuning config."""
    tunables = [t for ns in backend._KERNELS.values() for t in vars(ns).values()]
    by_fn = {id(t.fn): t for t in tunables}
    out = {}
    for launch in launches:
        out[launch.key()] = launch
        tunable = by_fn.get(id(launch.fn))
        if tunable is None:
            continue
        for config in tunable.configs:
            constexprs = {**launch.constexprs, **config.kwargs}
            other = Launch(launch.fn, launch.signature, constexprs, config.num_warps, config.num_stages)
            out.setdefault(other.key(), other)
    return list(out.values())


@dataclass
class Report:
    launch: Launch
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    tensor_core_ops: int  # mma.sync and wgmma.mma_async instructions in the PTX

    def resident_warps(self) -> int:
        """Warps of this kernel an SM of the target holds at once (tuning.resident_warps)."""
        return tuning.resident_warps(self.registers, self.launch.num_warps, self.shared_bytes,
                                     tuning.SHARED_PER_SM.get(self.arch, min(tuning.SHARED_PER_SM.values())))

    def over_budget(self) -> List[str]:
        """What of the resource budget (module docstring) this kernel misses. The CUDA-core
        convolutions (kernels_*.py) are held to no spills only: bound by their k^2 FP32 FMAs,
        they trade occupancy for register tiles (the backward's take 154-244 registers, 8
        warps an SM at the key shapes)."""
        missing = []
        if self.spill_stores or self.spill_loads:
            missing.append("spills")
        module = self.launch.fn.fn.__module__.rsplit(".", 1)[-1]
        if not module.startswith("kernels_") and self.resident_warps() < tuning.MIN_RESIDENT_WARPS:
            missing.append(f"{self.resident_warps()} resident warps < {tuning.MIN_RESIDENT_WARPS}")
        if module.startswith("banded_") and not self.tensor_core_ops:
            missing.append("no mma/wgmma")
        return missing


def _ptxas(arch: int) -> str:
    # The ptxas Triton itself assembles with for this arch (its PTX version needs it).
    from triton.backends.nvidia.compiler import get_ptxas
    return get_ptxas(arch).path


def compile_launch(launch: Launch, arch: int) -> Report:
    src = ASTSource(fn=launch.fn, signature={**launch.signature, **{k: "constexpr" for k in launch.constexprs}},
                    constexprs=launch.constexprs)
    target = GPUTarget("cuda", arch, 32)
    compiled = triton.compile(src, target=target,
                              options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run([_ptxas(arch), "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return Report(launch, arch, int(regs.group(1)) if regs else 0,
                  int(spills.group(1)) if spills else 0, int(spills.group(2)) if spills else 0,
                  int(compiled.metadata.shared), len(re.findall(r"\b(?:mma\.sync|wgmma\.mma_async)\.", ptx)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10, repeatable (default 90)")
    parser.add_argument("--layouts", default="nchw,channels_last")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--k", default="1,2,3,7,8,9,15,31")
    parser.add_argument("--activations", default="gelu,gelu_tanh,relu,silu")
    parser.add_argument("--all-configs", action="store_true", help="also every autotuning config")
    parser.add_argument("--key-shapes", action="store_true",
                        help="the eval and training forward and the backward of the key shapes (KEY_SHAPES, "
                             "bfloat16) instead of the sweep")
    parser.add_argument("--budget", action="store_true",
                        help="fail any kernel over the resource budget (spills, < 16 resident warps, a "
                             "tensor-core kernel without mma/wgmma)")
    args = parser.parse_args(argv)
    os.environ[tuning.AUTOTUNE_ENV] = "0"

    if args.key_shapes:
        calls = key_shape_calls(args.layouts.split(","))
    else:
        dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
        calls = backend_calls(args.layouts.split(","), dtypes, [int(k) for k in args.k.split(",")],
                              args.activations.split(","))
    launches = record_launches(calls)
    if args.all_configs:
        launches = with_all_configs(launches)
    failures = 0
    print(f"{len(launches)} distinct launches; registers, spill stores/loads (bytes), shared memory (bytes), "
          f"resident warps per SM, tensor-core instructions in the PTX")
    for arch in args.arch or [90]:
        for launch in launches:
            try:
                r = compile_launch(launch, arch)
            except Exception as e:  # report every failing kernel, not just the first
                failures += 1
                print(f"sm_{arch} FAILED {launch.describe()}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                continue
            flag = "  SPILLS" if r.spill_stores or r.spill_loads else ""
            over = r.over_budget() if args.budget else []
            if over:
                failures += 1
                flag = "  OVER BUDGET: " + ", ".join(over)
            print(f"sm_{arch} regs {r.registers:3d} spill {r.spill_stores:5d}/{r.spill_loads:5d} "
                  f"smem {r.shared_bytes:6d} warps/SM {r.resident_warps():2d} mma {r.tensor_core_ops:3d}  "
                  f"{launch.describe()}{flag}")
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
