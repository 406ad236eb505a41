"""Fills the Triton and TorchInductor caches for the benchmark's shapes while the CUDA
extension builds (gpu_check.sh runs it beside the build; it needs no compiled extension).

Triton's kernels are specialized on the constexprs and on which sizes are multiples of
16, not on the batch, so batch 64 compiles what the benchmark's batch 128 runs. Fixed
configs (CONVMIXER_KERNELS_TRITON_AUTOTUNE=0), as the benchmark in gpu_check.sh uses.
"""

import copy
import os
import time

import torch

os.environ.setdefault("CONVMIXER_KERNELS_TRITON_AUTOTUNE", "0")
from convmixer_kernels.reference import plain_mixer_block  # noqa: E402
from convmixer_kernels.triton import backend as triton_backend  # noqa: E402

SHAPES = ((768, 7), (1536, 9))  # the benchmark's (C, k), batch 128 at 32x32


def main():
    dev, bf16 = "cuda", torch.bfloat16
    for c, k in SHAPES:
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            t0 = time.time()
            x = torch.randn(64, c, 32, 32, device=dev, dtype=bf16).contiguous(memory_format=fmt)
            w = (torch.randn(c, 1, k, k, device=dev) / k).to(bf16)
            b = torch.randn(c, device=dev, dtype=bf16)
            g, beta = torch.ones(c, device=dev), torch.zeros(c, device=dev)
            mean, var = torch.zeros(c, device=dev), torch.ones(c, device=dev)
            triton_backend.forward_eval(x, w, b, g, beta, mean, var, 1e-5, "gelu")
            _, m, v = triton_backend.forward_train(x, w, b, g, beta, 1e-5, "gelu")
            triton_backend.backward(torch.randn_like(x), x, w, b, g, m, v, 1e-5, True, "gelu")
            torch.cuda.synchronize()
            print(f"triton C={c} k={k} {layout}: {time.time() - t0:.1f}s", flush=True)
            t0 = time.time()
            block = torch.compile(copy.deepcopy(plain_mixer_block(c, k, "gelu")).to(dev, bf16).eval())
            with torch.no_grad():
                block(torch.randn(128, c, 32, 32, device=dev, dtype=bf16).contiguous(memory_format=fmt))
            torch.cuda.synchronize()
            print(f"torch.compile C={c} k={k} {layout}: {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
