"""Triton kernels of the mixer block (the `triton` backend).

Nothing here imports triton at package import: `backend` is loaded on first use by
ops/backends/triton.py, so convmixer_kernels imports without triton installed. On CPU the
kernels run under TRITON_INTERPRET=1, which must be set before triton is imported.

  activations.py             act and act' as device functions
  banded_nchw.py,            the forward passes of float16/bfloat16 on tensor cores: the conv
  banded_channels_last.py      as tl.dot with the banded row matrix (DESIGN.md, "GPU roofline")
  banded_backward_nchw.py,   the backward passes of float16/bfloat16 on tensor cores: h and
  banded_backward_channels_last.py  dx on the same band product, dweight as diagonal sums of
                               dh^T times the shifted input rows
  block_math.py              per-element math every layout shares (BatchNorm's backward, merges)
  kernels_channels_last.py   tiles of contiguous channels x pixels, vectorized over C
  kernels_nchw.py            2-D tiles of one plane, vectorized over W
  reductions.py              deterministic merges of per-region partials
  tuning.py                  config sets, defaults, the autotune switch
  backend.py                 launchers behind the backend interface
  gemm_epilogue.py           gemm_epilogue's matmul with the epilogue in its last pass (pointwise, stem)
"""
