"""The parity sweep of docs/design.md, once, for every backend: against reference.py in
float64, fresh inputs, poisoned outputs (tests/harness/parity.py), over the sizes, kernel
sizes, dtypes and activations of tests/harness/sweep.py.

The `backend` fixture yields each backend with the device it runs on and skips, with the
backend's own reason, where it cannot run. The GPU backends' params carry the gpu marks
(and gpu_quick: scripts/gpu_check.sh runs the whole sweep in its short pass). The Triton
interpreter and the CUDA emulator are too slow for the whole sweep on a CPU; their files in
tests/ops/backends run the sweep's reduced form.
"""

import itertools
from typing import NamedTuple

import pytest
import torch

from convmixer_kernels import mixer_block
from convmixer_kernels.ops import backends
from convmixer_kernels.reference import mixer_block_reference
from tests.harness.parity import GPU_QUICK, OPTIONAL_PARAMETERS, Case, check_backend, make_inputs
from tests.harness.sweep import (ACTIVATIONS, DENSE_LAYOUTS, DTYPES, KERNEL_SIZES, LAYOUTS, MOMENTA, SIZE_KERNELS,
                                 SIZES, assert_nonfinite_as_in_reference, dtype_id)


class SweepBackend(NamedTuple):
    name: str
    device: str

    def check(self, training, momentum=0.1, **case):
        check_backend(make_inputs(Case(**case, device=self.device)), self.name, training=training, momentum=momentum)


_GPU = [pytest.mark.gpu, GPU_QUICK]
_PARAMS = [
    pytest.param(SweepBackend("cpu", "cpu"), id="cpu"),
    pytest.param(SweepBackend("eager", "cpu"), id="eager"),
    pytest.param(SweepBackend("cuda", "cuda"), id="cuda", marks=_GPU),
]


@pytest.fixture(params=_PARAMS)
def backend(request):
    b = request.param
    why = backends.why_unavailable(b.name, torch.device(b.device), torch.float32)
    if why is None and b.device == "cuda" and not torch.cuda.is_available():
        why = "no CUDA GPU"
    if why is not None:
        pytest.skip(f"{b.name}: {why}")
    return b


def _skip_unsupported_dtype(backend, dtype):
    why = backends.why_unavailable(backend.name, torch.device(backend.device), dtype)
    if why is not None:
        pytest.skip(why)


@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", KERNEL_SIZES)
def test_kernel_sizes_and_layouts(backend, training, layout, k):
    backend.check(training, n=2, c=17, h=13, w=13, k=k, layout=layout)


@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("k", SIZE_KERNELS)
def test_sizes(backend, training, size, k):
    n, h, w = size
    for layout in DENSE_LAYOUTS:
        backend.check(training, n=n, c=33, h=h, w=w, k=k, layout=layout)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_activations_and_dtypes(backend, activation, dtype):
    _skip_unsupported_dtype(backend, dtype)
    for training, layout in itertools.product((False, True), DENSE_LAYOUTS):
        backend.check(training, n=2, c=19, h=11, w=11, k=7, dtype=dtype, layout=layout, activation=activation)


@pytest.mark.parametrize("bias,affine,running", OPTIONAL_PARAMETERS)
def test_optional_parameters(backend, bias, affine, running):
    for training, layout in itertools.product((False, True), DENSE_LAYOUTS):
        backend.check(training, n=2, c=9, h=9, w=9, k=5, bias=bias, affine=affine, running=running, layout=layout)


@pytest.mark.parametrize("momentum", MOMENTA)
def test_momentum(backend, momentum):
    backend.check(True, momentum=momentum, n=3, c=6, h=7, w=7, k=3)


def test_wide_channels(backend):
    # C large and not a multiple of any vector width; both layouts.
    for layout in DENSE_LAYOUTS:
        backend.check(True, n=1, c=257, h=8, w=8, k=9, layout=layout)


@pytest.mark.parametrize("layout", DENSE_LAYOUTS)
def test_nan_and_inf(backend, layout):
    inputs = make_inputs(Case(n=1, c=4, h=9, w=9, k=3, layout=layout, device=backend.device))
    x = inputs.x.clone()
    x[0, 0, 4, 4] = float("nan")
    x[0, 1, 2, 2] = float("inf")
    x[0, 2, 0, 8] = float("-inf")
    args = (x, inputs.weight, inputs.bias, inputs.gamma, inputs.beta, inputs.running_mean, inputs.running_var)
    y = mixer_block(*args, training=False, backend=backend.name)
    if backend.name == "eager":
        # eager is float32 eager itself: its NaN at gelu(+inf) is the rounding the rule's
        # float64 reference corrects, so it is held to float32 eager's placement.
        ref = mixer_block_reference(*args, training=False)
        assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
        return
    assert_nonfinite_as_in_reference(y, args, backend.name)
