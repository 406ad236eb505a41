"""The parity sweep of docs/design.md, once, for every backend: against reference.py in
float64, fresh inputs, poisoned outputs (tests/harness/parity.py), over the axes of each
backend's Sweep (tests/harness/sweep.py).

Each test is parametrized over the backends and, per backend, over the values its Sweep
gives each axis (`pytest_generate_tests` below). The `backend` fixture skips, with the
backend's own reason, where it cannot run, and registers the CUDA emulator's backend for
its cases. The GPU backends' cases carry the gpu marks; `gpu_quick` marks those that
scripts/gpu_check.sh runs in its short pass.
"""

import itertools
from typing import Callable, NamedTuple

import pytest
import torch

from convmixer_kernels import mixer_block
from convmixer_kernels.ops import backends
from convmixer_kernels.reference import mixer_block_reference
from tests.harness import sweep
from tests.harness.parity import GPU_QUICK, Case, check_backend, make_inputs
from tests.harness.sweep import EMULATOR, FULL, GPU, INTERPRETER, Sweep, assert_nonfinite_as_in_reference, dtype_id


class SweepBackend(NamedTuple):
    name: str
    device: str
    sweep: Sweep
    # (test name, case) -> whether the case is in the short GPU pass; None: not a GPU backend
    quick: Callable = None

    def check(self, training, momentum=0.1, **case):
        check_backend(make_inputs(Case(**case, device=self.device)), self.name, training=training, momentum=momentum)


def _cuda_quick(test, case):
    # The whole sweep, its sizes in float32 (the 16-bit sizes run in the full gpu pass).
    return test != "test_sizes" or case["dtype"] == torch.float32


def _triton_quick(test, case):
    # The kernel sizes of the benchmark and one even k, one momentum, NaN and inf.
    return ((test == "test_kernel_sizes_and_layouts" and case["k"] in (3, 7, 8))
            or case.get("momentum") == 0.3 or test == "test_nan_and_inf")


BACKENDS = (
    SweepBackend("cpu", "cpu", FULL),
    SweepBackend("eager", "cpu", FULL),
    SweepBackend("cuda", "cuda", GPU, _cuda_quick),
    SweepBackend("triton", "cuda", GPU, _triton_quick),
    SweepBackend("triton", "cpu", INTERPRETER),  # under TRITON_INTERPRET=1 (tests/conftest.py)
    SweepBackend("cuda_emulated", "cpu", EMULATOR),  # csrc/cuda on the CPU (tests/harness/cuda_emulator)
)


def _backend_id(b: SweepBackend) -> str:
    if b.name == "triton":
        return "triton_gpu" if b.device == "cuda" else "triton_interpreter"
    return b.name


# Each test's axes: name -> the Sweep's values for it.
AXES = {
    "test_kernel_sizes_and_layouts": lambda s: dict(k=s.kernel_sizes, layout=s.layouts, training=sweep.MODES),
    "test_sizes": lambda s: dict(k=s.size_kernels, size=s.sizes, dtype=s.size_dtypes, training=sweep.MODES),
    "test_activations_and_dtypes": lambda s: dict(dtype=s.dtypes, activation=s.activations),
    "test_optional_parameters": lambda s: dict(optional=s.optional_parameters),
    "test_momentum": lambda s: dict(momentum=s.momenta),
    "test_wide_channels": lambda s: dict(c=s.wide_channels),
    "test_nan_and_inf": lambda s: dict(layout=sweep.DENSE_LAYOUTS),
}


def _value_id(name, value):
    if isinstance(value, torch.dtype):
        return dtype_id(value)
    if name == "training":
        return "train" if value else "eval"
    if isinstance(value, tuple):
        return "x".join(map(str, value)) if name == "size" else "-".join(map(str, value))
    return f"{name}{value}" if name in ("k", "c", "momentum") else str(value)


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    axes = AXES[metafunc.function.__name__]
    names = list(axes(FULL))
    params = []
    for b in BACKENDS:
        for values in itertools.product(*axes(b.sweep).values()):
            case = dict(zip(names, values))
            marks = []
            if b.quick is not None:
                marks = [pytest.mark.gpu] + ([GPU_QUICK] if b.quick(metafunc.function.__name__, case) else [])
            ids = [_backend_id(b)] + [_value_id(n, v) for n, v in case.items()]
            params.append(pytest.param(b, *values, marks=marks, id="-".join(ids)))
    metafunc.parametrize(["backend", *names], params, indirect=["backend"])


@pytest.fixture
def backend(request):
    b = request.param
    if b.device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{b.name}: no CUDA GPU")
    if b.name == "cuda_emulated":
        request.getfixturevalue("emulated")  # registers it for this test
    elif b.device == "cpu" and b.name == "triton" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the triton backend runs its GPU sweep, not the interpreter")
    why = backends.why_unavailable(b.name, torch.device(b.device), torch.float32)
    if why is not None:
        pytest.skip(f"{b.name}: {why}")
    return b


def _skip_unsupported_dtype(backend, dtype):
    why = backends.why_unavailable(backend.name, torch.device(backend.device), dtype)
    if why is not None:
        pytest.skip(why)


def test_kernel_sizes_and_layouts(backend, k, layout, training):
    n, c, h, w = backend.sweep.kernel_shape
    backend.check(training, n=n, c=c, h=h, w=w, k=k, layout=layout)


def test_sizes(backend, k, size, dtype, training):
    _skip_unsupported_dtype(backend, dtype)
    n, h, w = size
    for layout in sweep.DENSE_LAYOUTS:
        backend.check(training, n=n, c=backend.sweep.size_channels, h=h, w=w, k=k, dtype=dtype, layout=layout)


def test_activations_and_dtypes(backend, dtype, activation):
    _skip_unsupported_dtype(backend, dtype)
    n, c, h, w, k = backend.sweep.activation_case
    for training, layout in backend.sweep.modes_and_layouts:
        backend.check(training, n=n, c=c, h=h, w=w, k=k, dtype=dtype, layout=layout, activation=activation)


def test_optional_parameters(backend, optional):
    bias, affine, running = optional
    n, c, h, w, k = backend.sweep.optional_case
    for training, layout in backend.sweep.modes_and_layouts:
        backend.check(training, n=n, c=c, h=h, w=w, k=k, bias=bias, affine=affine, running=running, layout=layout)


def test_momentum(backend, momentum):
    backend.check(True, momentum=momentum, n=3, c=6, h=7, w=7, k=3)


def test_wide_channels(backend, c):
    # C large and not a multiple of any vector width; both layouts.
    for layout in sweep.DENSE_LAYOUTS:
        backend.check(True, n=1, c=c, h=8, w=8, k=9, layout=layout)


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
