"""Parity of the CPU-side backends (the compiled `cpu` kernels and the `eager` fallback)
against reference.py in float64, over the sweep of DESIGN.md."""

import itertools

import pytest
import torch

from parity import OPTIONAL_PARAMETERS, Case, check_backend, make_inputs

BACKENDS = ("cpu", "eager")
KERNEL_SIZES = (1, 2, 3, 7, 8, 9, 15, 31)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("layout", ("nchw", "channels_last", "sliced"))
@pytest.mark.parametrize("k", KERNEL_SIZES)
def test_kernel_sizes_and_layouts(backend, training, layout, k):
    case = Case(n=2, c=17, h=13, w=13, k=k, layout=layout)
    check_backend(make_inputs(case), backend, training=training)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("size", ((1, 7, 7), (3, 31, 31), (1, 33, 33), (3, 1, 1), (2, 5, 12), (1, 32, 1)))
@pytest.mark.parametrize("k", (3, 8, 9))
def test_sizes(backend, training, size, k):
    n, h, w = size
    for layout in ("nchw", "channels_last"):
        check_backend(make_inputs(Case(n=n, c=33, h=h, w=w, k=k, layout=layout)), backend, training=training)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ("gelu", "gelu_tanh", "relu", "silu"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16, torch.float16),
                         ids=lambda d: str(d)[6:])
def test_activations_and_dtypes(backend, activation, dtype):
    for training, layout in itertools.product((False, True), ("nchw", "channels_last")):
        case = Case(n=2, c=19, h=11, w=11, k=7, dtype=dtype, layout=layout, activation=activation)
        check_backend(make_inputs(case), backend, training=training)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias,affine,running", OPTIONAL_PARAMETERS)
def test_optional_parameters(backend, bias, affine, running):
    for training in (False, True):
        case = Case(n=2, c=9, h=9, w=9, k=5, bias=bias, affine=affine, running=running, layout="channels_last")
        check_backend(make_inputs(case), backend, training=training)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", (0.0, 0.3, 1.0))
def test_momentum(backend, momentum):
    check_backend(make_inputs(Case(n=3, c=6, h=7, w=7, k=3)), backend, training=True, momentum=momentum)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wide_channels(backend):
    # C large and not a multiple of any vector width; both layouts.
    for layout in ("nchw", "channels_last"):
        check_backend(make_inputs(Case(n=1, c=257, h=8, w=8, k=9, layout=layout)), backend, training=True)


def test_nan_and_inf_propagate_as_in_eager():
    from convmixer_kernels import mixer_block
    from convmixer_kernels.reference import mixer_block_reference

    inputs = make_inputs(Case(n=1, c=4, h=9, w=9, k=3, running=True))
    x = inputs.x.clone()
    x[0, 0, 4, 4] = float("nan")
    x[0, 1, 2, 2] = float("inf")
    args = (x, inputs.weight, inputs.bias, inputs.gamma, inputs.beta, inputs.running_mean, inputs.running_var)
    ref = mixer_block_reference(*args, training=False)
    for backend in BACKENDS:
        y = mixer_block(*args, training=False, backend=backend)
        # Non-finite exactly where eager is, and never NaN where eager is not. The one
        # allowed difference: gelu(+inf) is +inf (the limit, and float64 eager's answer)
        # where float32 eager returns NaN.
        assert torch.equal(y.isfinite(), ref.isfinite()), backend
        assert not (y.isnan() & ~ref.isnan()).any(), backend
        finite = ref.isfinite()
        torch.testing.assert_close(y[finite], ref[finite], rtol=1e-5, atol=1e-5)
