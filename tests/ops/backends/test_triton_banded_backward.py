"""The Triton tensor-core backward (triton/banded_backward_*.py): backward passes 1 and 2
(recomputing h on the banded product), 3a (dx through the flipped band) and 3b (dweight
as the diagonal sums of dh^T times the shifted input rows), which float16 and bfloat16
take with CONVMIXER_KERNELS_TRITON_TENSOR_CORES=all (every test here sets it, but the one
of the dispatch: by default the backward runs on CUDA cores).

On a CPU machine they run under TRITON_INTERPRET=1 in float16 only (the interpreter's
tl.dot multiplies bfloat16 operands as raw bits: the backend refuses bfloat16 there, see
test_triton_banded.py); bfloat16 runs in the gpu tests below, in test_triton_banded.py's
k sweep (every pass) and in test_triton_gpu.py.
Shapes are small because the interpreter runs every program in Python; each test says
which tiles its shape exercises.
"""

import os
from dataclasses import replace

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

from tests.harness.parity import (GPU_QUICK, Case, check_backend, make_inputs, rel_err, run_block,  # noqa: E402
                                  summand_scales)
from tests.ops.backends.test_triton_banded import FLOAT16_BOUND, LAYOUTS, _cpu_only  # noqa: E402

BACKWARD_KERNELS = ("banded_backward_stats", "banded_backward_dh", "banded_backward_dx", "banded_backward_dw")


@pytest.fixture(autouse=True)
def backward_on_tensor_cores(monkeypatch):
    from convmixer_kernels.triton import tuning

    monkeypatch.setenv(tuning.TENSOR_CORES_ENV, "all")


@pytest.fixture
def launched(monkeypatch):
    """The names of the tunable kernels the backend launches, as module.function."""
    from convmixer_kernels.triton import tuning

    names = []
    launch = tuning.Tunable.launch

    def record(self, grid, *args, **kwargs):
        names.append(f"{self.fn.fn.__module__.rsplit('.', 1)[-1]}.{self.fn.__name__}")
        return launch(self, grid, *args, **kwargs)

    monkeypatch.setattr(tuning.Tunable, "launch", record)
    return names


@_cpu_only
@pytest.mark.parametrize("switch", ("0", "1", "all"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=("float32", "float16"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_takes_tensor_cores_when_asked(monkeypatch, launched, switch, dtype, layout):
    # float16 runs the forward passes on tensor cores unless switched off ("0"), and the
    # backward ones only with "all"; float32 never reaches a tl.dot.
    from convmixer_kernels.triton import tuning

    monkeypatch.setenv(tuning.TENSOR_CORES_ENV, switch)
    run_block(make_inputs(Case(n=1, c=2, h=5, w=5, k=3, dtype=dtype, layout=layout)), training=True,
              backend="triton", grads=True)
    passes = {"backward_stats", "backward_dh", "backward_dx", "backward_dw"}
    banded = {name.split(".")[1] for name in launched if name.startswith("banded_backward_")}
    core = {name.split(".")[1] for name in launched if name.startswith("kernels_") and "backward" in name}
    backward_on_tensor_cores = dtype == torch.float16 and switch == "all"
    assert banded == (passes if backward_on_tensor_cores else set())
    assert core == (set() if backward_on_tensor_cores else passes)
    forward_on_tensor_cores = dtype == torch.float16 and switch != "0"
    assert any(name.startswith("banded_nchw.") or name.startswith("banded_channels_last.")
               for name in launched) == forward_on_tensor_cores


def test_the_tensor_core_backward_asks_for_a_triton_with_gather(monkeypatch):
    import triton

    from convmixer_kernels.triton import tuning

    monkeypatch.delattr(triton.language, "gather")
    with pytest.raises(RuntimeError, match="needs tl.gather"):
        tuning.tensor_core_backward_enabled()


def test_an_unknown_tensor_core_setting_is_refused(monkeypatch):
    from convmixer_kernels.triton import tuning

    monkeypatch.setenv(tuning.TENSOR_CORES_ENV, "backward")
    with pytest.raises(ValueError, match="must be one of 0, 1, all, got 'backward'"):
        tuning.tensor_cores_enabled()


@_cpu_only
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", (1, 2, 7, 8))
def test_training_backward_float16(k, layout):
    # N * H = 14 rows: pass 3a's 16-row tiles stack both images. W = 19: two column tiles,
    # the second ragged, so pass 3b's products add up tiles of different first columns and
    # meet dh masked beside the edge. C = 3: a ragged channel block in channels_last.
    case = Case(n=2, c=3, h=7, w=19, k=k, dtype=torch.float16, layout=layout)
    check_backend(make_inputs(case), "triton", training=True)


@_cpu_only
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_over_several_bands(layout):
    # One image of 20 rows splits into 4 bands of 5 rows, each region a 16-row tile whose
    # rows past the band are masked: pass 3b's products must leave them out (the next
    # band's program sums them), and the partials of every pass merge over 4 regions.
    # Frozen BN too: pass 2 then reduces dgamma and dbeta itself.
    for training in (False, True):
        case = Case(n=1, c=3, h=20, w=9, k=3, dtype=torch.float16, layout=layout)
        check_backend(make_inputs(case), "triton", training=training)


def _frozen_backward_errors(case):
    """Errors of the frozen-BN gradients (no cancellation in the statistics) against the
    float64 reference; dweight and dbias relative to their summands."""
    inputs = make_inputs(case)
    out = run_block(inputs, training=False, backend="triton", grads=True)
    ref = run_block(inputs.to(dtype=torch.float64, device="cpu"), training=False, backend=None, grads=True)
    scales = summand_scales(inputs, training=False)
    return {name: rel_err(out[name], ref[name], scales.get(name)) for name in ("dx", "dweight", "dbias")}


@_cpu_only
@pytest.mark.parametrize("layout", LAYOUTS)
def test_band_wide_as_its_segment(layout):
    # k = 17: BAND_W + k - 1 = 32 fills the segment, so the diagonal sums of pass 3b reach
    # its last column, and the 32 diagonals a power of two takes past k read clamped ones.
    errors = _frozen_backward_errors(Case(n=1, c=2, h=5, w=20, k=17, dtype=torch.float16, layout=layout))
    assert max(errors.values()) <= FLOAT16_BOUND, errors


@_cpu_only
@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", (3, 9, 15, 18, 31))
def test_backward_float16_kernel_sizes(k, layout):
    # Against the float64 reference within DESIGN.md's float16 bound, as
    # test_triton_banded.py's k sweep (eager's CPU float16 convolution takes minutes at
    # k = 31); k = 18 and 31 take 64-column segments.
    errors = _frozen_backward_errors(Case(n=2, c=3, h=11, w=k + 5, k=k, dtype=torch.float16, layout=layout))
    assert max(errors.values()) <= FLOAT16_BOUND, errors


def _with_nonfinite(inputs, where):
    x = inputs.x.clone()
    for index, value in where:
        x[index] = value
    return replace(inputs, x=x)


def _assert_nonfinite_gradients_as_reference(inputs):
    out = run_block(inputs, training=False, backend="triton", grads=True)
    ref = run_block(inputs.to(dtype=torch.float64, device="cpu"), training=False, backend=None, grads=True)
    for name in ("dx", "dweight", "dbias"):
        got, want = out[name].cpu(), ref[name]
        assert torch.equal(got.isnan(), want.isnan()), name
        assert torch.equal(got.isinf(), want.isinf()), name
    return out, ref


def _nan_in_dh(layout, device, dtype):
    # gelu'(inf) is NaN, so dh is NaN around the NaN and the inf of x: pass 3a's band
    # product would spread it along whole rows, and its exact recompute keeps it to the
    # windows; pass 3b's sums of the two channels are all NaN, as the reference's.
    inputs = make_inputs(Case(n=2, c=3, h=9, w=21, k=5, dtype=dtype, layout=layout, device=device))
    inputs = _with_nonfinite(inputs, (((0, 0, 4, 4), float("nan")), ((1, 1, 2, 17), float("inf"))))
    out, ref = _assert_nonfinite_gradients_as_reference(inputs)
    assert ref["dx"].isnan().any() and not ref["dx"].isnan().all()


def _inf_beside_the_right_edge(layout, device, dtype):
    # relu keeps dh finite (relu'(+-inf) is 1 or 0), so dx is finite and dweight holds
    # +-inf where dh meets the inf and NaN where dh is 0 there, finite for the taps that
    # never reach it. W = 21 leaves the last 16-column tile 11 columns past the edge, whose
    # masked-off dh meet the inf at columns 19 and 20 in pass 3b's products (0 * inf): the
    # region's sums are then summed again exactly.
    inputs = make_inputs(Case(n=2, c=3, h=9, w=21, k=5, dtype=dtype, layout=layout, activation="relu",
                              device=device))
    inputs = _with_nonfinite(inputs, (((1, 1, 4, 20), float("inf")), ((0, 2, 0, 19), float("-inf"))))
    out, ref = _assert_nonfinite_gradients_as_reference(inputs)
    assert ref["dx"].isfinite().all()
    for c in (1, 2):
        taps = ref["dweight"][c]
        assert taps.isinf().any() and taps.isfinite().any()


# numpy warns of the inf * 0 products in the interpreter's tl.dot.
@_cpu_only
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_in_dh_reaches_only_its_windows(layout):
    _nan_in_dh(layout, "cpu", torch.float16)


@_cpu_only
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_inf_beside_the_right_edge_meets_no_masked_dh(layout):
    _inf_beside_the_right_edge(layout, "cpu", torch.float16)


def _gradients(inputs):
    out = run_block(inputs, training=True, backend="triton", grads=True)
    return [out[name] for name in ("dx", "dweight", "dbias", "dgamma", "dbeta")]


@_cpu_only
@pytest.mark.parametrize("layout", LAYOUTS)
def test_deterministic(layout):
    inputs = make_inputs(Case(n=2, c=3, h=7, w=19, k=5, dtype=torch.float16, layout=layout))
    for first, second in zip(_gradients(inputs), _gradients(inputs)):
        assert torch.equal(first, second)


@_cpu_only
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_config(monkeypatch, layout):
    # Each backward kernel on each of its autotuning configs (the fixed default is the
    # first); C = 3 leaves channels_last's channel blocks of 2 and 4 ragged.
    from convmixer_kernels.triton import backend

    tunables = [getattr(backend._KERNELS[layout], name) for name in BACKWARD_KERNELS]
    case = Case(n=2, c=3, h=9, w=17, k=3, dtype=torch.float16, layout=layout)
    for index in range(1, max(len(t.configs) for t in tunables)):
        for tunable in tunables:
            monkeypatch.setattr(tunable, "default", tunable.configs[index % len(tunable.configs)])
        check_backend(make_inputs(case), "triton", training=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=("bfloat16", "float16"))
@GPU_QUICK
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_nonfinite_gradients_as_reference(layout, dtype):
    _nan_in_dh(layout, "cuda", dtype)
    _inf_beside_the_right_edge(layout, "cuda", dtype)
