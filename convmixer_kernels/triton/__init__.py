"""Triton kernels of the mixer block (the `triton` backend).

Nothing here imports triton at package import: `backend` is loaded on first use by
ops/backends/triton.py, so convmixer_kernels imports without triton installed. On CPU the
kernels run under TRITON_INTERPRET=1, which must be set before triton is imported.

  activations.py             act and act' as device functions
  kernels_channels_last.py   tiles of contiguous channels x pixels, vectorized over C
  kernels_nchw.py            2-D tiles of one plane, vectorized over W
  reductions.py              deterministic merges of per-region partials
  tuning.py                  config sets, defaults, the autotune switch
  backend.py                 launchers behind the backend interface
"""
