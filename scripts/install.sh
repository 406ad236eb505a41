#!/usr/bin/env bash
# Installs convmixer_kernels (building its C++/CUDA extension against the torch that is
# there) and what the tests, examples and benchmarks use. Works on a fresh CPU machine
# (installs torch==2.13.0, whose CPU build pip finds here) and on a GPU machine whose
# image already has torch, triton, nvcc and ninja (it keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet --disable-pip-version-check"

if ! $PY -c "import torch" 2>/dev/null; then
  $PIP torch==2.13.0
fi
# triton: the GPU backend; on a CPU machine its interpreter runs the Triton tests.
$PY -c "import triton" 2>/dev/null || $PIP triton
$PIP setuptools wheel ninja numpy pytest pytest-xdist expecttest
# The model layer's extras: images, progress bars, the digits example, plots, ONNX export.
$PIP pillow tqdm scikit-learn matplotlib onnx onnxruntime onnxscript
# timm's ImageNet synset list (evaluate maps synset-named folders with it); its files only:
# its dependencies would bring a torchvision that does not match this torch.
$PIP --no-deps timm
MAX_JOBS=${MAX_JOBS:-$(nproc)} $PIP --no-build-isolation -e .
$PY -c "import convmixer_kernels as c; print('convmixer_kernels', c.__version__, 'backends on cpu:', c.available_backends('cpu'), 'cpu capability:', c.cpu_capability())"
