"""A short run of the cuda backend for compute-sanitizer (memcheck, racecheck):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
        python scripts/gpu_sanitize.py

Every pass, eval and training with backward, on each kind of kernel: tensor cores (bf16
k=7 NCHW with 16-byte staging, bf16 k=9 channels_last on 16x16 tiles), the wide 32x32
tile every ConvMixer shape selects (34 x 8 channel groups = 272 blocks >= 2 x 132 SMs, see
launch.cuh make_plan), fp16 k=3, CUDA cores with element-wise staging (f32 k=5, C % 4 !=
0) and the generic k (f32 k=4, bf16 k=2). Small, because instrumentation slows kernels a
hundredfold. tests/ops/backends/test_cuda_gpu.py::test_compute_sanitizer runs this script too.
"""

import torch

from convmixer_kernels import mixer_block

CASES = [  # (dtype, layout, n, c, h, w, k)
    (torch.bfloat16, "channels_last", 34, 64, 32, 32, 7),
    (torch.bfloat16, "nchw", 1, 16, 24, 40, 7),
    (torch.bfloat16, "channels_last", 1, 16, 16, 16, 9),
    (torch.float16, "nchw", 2, 20, 12, 12, 3),
    (torch.float32, "channels_last", 1, 18, 20, 20, 5),
    (torch.float32, "nchw", 1, 10, 13, 13, 4),
    (torch.bfloat16, "channels_last", 1, 12, 9, 9, 2),
]


def main():
    torch.manual_seed(0)
    for dtype, layout, n, c, h, w, k in CASES:
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(n, c, h, w, device="cuda", dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
        wt = (torch.randn(c, 1, k, k, device="cuda", dtype=dtype) / k).requires_grad_()
        b = torch.randn(c, device="cuda", dtype=dtype).requires_grad_()
        g = torch.randn(c, device="cuda").requires_grad_()
        beta = torch.randn(c, device="cuda").requires_grad_()
        rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
        for training in (False, True):
            y = mixer_block(x, wt, b, g, beta, rm, rv, training=training, backend="cuda")
            y.backward(torch.randn_like(y))
        torch.cuda.synchronize()
        print("sanitized", dtype, layout, (n, c, h, w), k, flush=True)
    print("sanitizer script done")


if __name__ == "__main__":
    main()
