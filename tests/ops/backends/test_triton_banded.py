"""The Triton tensor-core kernels (triton/banded_*.py: the depthwise conv as tl.dot on the
banded row matrix), which float16 and bfloat16 take in the forward passes (the eval
forward, the training statistics and apply passes; the backward ones in
test_triton_banded_backward.py).

On a CPU machine they run under TRITON_INTERPRET=1 in float16 only: the interpreter's
tl.dot multiplies bfloat16 operands as their raw uint16 bit patterns, and it rounds
float32 -> bfloat16 toward zero, so bfloat16 is left to the gpu tests below (and to
test_triton_gpu.py, whose bf16 sweeps run these kernels too). The default run covers
every kernel once per layout with odd shapes (rows of several images stacked in one
block, ragged channel, row and column blocks); the slow mark holds the k sweep.
"""

import os
from dataclasses import replace

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

from tests.harness.parity import (GPU_QUICK, Case, check_backend, make_inputs, poisoned_outputs, rel_err,  # noqa: E402
                                  run_block)

import convmixer_kernels as cmk  # noqa: E402
from convmixer_kernels.reference import mixer_block_reference  # noqa: E402

LAYOUTS = ("nchw", "channels_last")
FLOAT16_BOUND = 2e-3  # DESIGN.md, "Numerics and tests"
_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the gpu tests below cover a CUDA machine")
_gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _eval_block(inputs, backend="triton"):
    args = (inputs.x, inputs.weight, inputs.bias, inputs.gamma, inputs.beta, inputs.running_mean,
            inputs.running_var)
    with poisoned_outputs():
        return cmk.mixer_block(*args, training=False, activation=inputs.case.activation, backend=backend)


@pytest.mark.parametrize("switch", ("1", "0", "all"))
def test_tensor_cores_take_16_bit_inputs_only(monkeypatch, switch):
    from convmixer_kernels.triton import backend, tuning

    monkeypatch.setenv(tuning.TENSOR_CORES_ENV, switch)
    w = torch.randn(3, 1, 3, 3)
    for dtype, expected in ((torch.float32, False), (torch.float16, True), (torch.bfloat16, True)):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(1, 3, 5, 5).to(dtype).contiguous(memory_format=fmt)
            plan = backend._LaunchPlan(x, w.to(dtype), "gelu")
            assert plan.tensor_cores is (expected and switch != "0")
            assert plan.tensor_core_backward is (expected and switch == "all")
            if plan.tensor_cores:
                assert plan.w_band.dtype == dtype and plan.w_band.is_contiguous()


@_cpu_only
def test_interpreter_refuses_bfloat16_tensor_cores(monkeypatch):
    from convmixer_kernels.ops.backends import get_backend
    from convmixer_kernels.triton import tuning

    backend = get_backend("triton")
    cpu = torch.device("cpu")
    assert "bfloat16" in backend.why_unavailable(cpu, torch.bfloat16)
    assert backend.why_unavailable(cpu, torch.float16) is None
    x = torch.randn(1, 2, 5, 5, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=tuning.TENSOR_CORES_ENV):
        cmk.mixer_block(x, torch.randn(2, 1, 3, 3, dtype=torch.bfloat16), None, None, None, torch.zeros(2),
                        torch.ones(2), training=False, backend="triton")
    monkeypatch.setenv(tuning.TENSOR_CORES_ENV, "0")
    assert backend.why_unavailable(cpu, torch.bfloat16) is None


@_cpu_only
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", (1, 2, 7, 8))
def test_eval_float16(k, layout):
    # N * H = 21 rows: two row blocks, one of them straddling an image boundary; W = 19
    # takes two column tiles, C = 5 a ragged channel block.
    case = Case(n=3, c=5, h=7, w=19, k=k, dtype=torch.float16, layout=layout)
    check_backend(make_inputs(case), "triton", training=False, grads=False)


@_cpu_only
@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", (3, 9, 15, 17, 18, 31))
def test_eval_float16_kernel_sizes(k, layout):
    # Against the float64 reference within DESIGN.md's float16 bound: the harness's
    # eager float16 comparison would run torch's CPU float16 convolution, minutes at k = 31.
    inputs = make_inputs(Case(n=2, c=3, h=13, w=k + 5, k=k, dtype=torch.float16, layout=layout))
    ref = mixer_block_reference(*inputs.to(dtype=torch.float64).tensors(), training=False)
    assert rel_err(_eval_block(inputs), ref) <= FLOAT16_BOUND


@_cpu_only
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n,c,h", ((2, 3, 7), (1, 5, 20)), ids=("one_band", "four_bands"))
def test_training_forward_float16(layout, n, c, h):
    # Both training passes: the statistics one, over regions of one image (H = 20 on one
    # image splits into 4 bands of 5 rows, each a masked 16-row tile), and the apply one.
    case = Case(n=n, c=c, h=h, w=9, k=3, dtype=torch.float16, layout=layout)
    check_backend(make_inputs(case), "triton", training=True, grads=False)


def _assert_nan_inf_as_eager(layout, device, dtype, k):
    inputs = make_inputs(Case(n=2, c=4, h=11, w=21, k=k, dtype=dtype, layout=layout, device=device))
    x = inputs.x.clone()
    x[0, 0, 4, 4] = float("nan")
    x[1, 1, 2, 17] = float("inf")
    x[1, 2, 9, 0] = float("-inf")
    inputs = replace(inputs, x=x)
    y = _eval_block(inputs).cpu()
    # The float64 reference, not eager at x's precision: CPU eager's float16 convolution
    # itself spreads an inf to NaN beyond its windows.
    ref = mixer_block_reference(*inputs.to(dtype=torch.float64, device="cpu").tensors(), training=False)
    # A tile whose band meets a non-finite input is recomputed exactly: NaN and inf
    # exactly where the reference has them, and the finite outputs of those tiles right.
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert y.isnan().any() and y.isinf().any()
    finite = ref.isfinite()
    assert rel_err(y[finite], ref[finite]) < (FLOAT16_BOUND if dtype == torch.float16 else 1.6e-2)


# numpy warns of the inf * 0 products in the interpreter's tl.dot.
@_cpu_only
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_and_inf_reach_only_their_windows(layout):
    _assert_nan_inf_as_eager(layout, "cpu", torch.float16, 5)


@_cpu_only
@pytest.mark.parametrize("layout", LAYOUTS)
def test_deterministic(layout):
    inputs = make_inputs(Case(n=2, c=5, h=7, w=9, k=7, dtype=torch.float16, layout=layout))
    assert torch.equal(_eval_block(inputs), _eval_block(inputs))


@_cpu_only
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_config(monkeypatch, layout):
    from convmixer_kernels.triton import backend

    tunable = backend._KERNELS[layout].banded_apply
    case = Case(n=2, c=9, h=9, w=17, k=5, dtype=torch.float16, layout=layout)
    for config in tunable.configs:
        monkeypatch.setattr(tunable, "default", config)
        check_backend(make_inputs(case), "triton", training=False, grads=False)


# The tensor-core settings of the gpu tests: the backward on CUDA cores (the default) and
# on tensor cores (test_triton_banded_backward.py).
_BACKWARDS = pytest.mark.parametrize("setting", ("1", "all"), ids=("backward_cuda_cores", "backward_tensor_cores"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=("bfloat16", "float16"))
@pytest.mark.parametrize("k", (1, 2, 3, 5, 7, 8, 9, 12, 15, 17, 18, 31))
@_BACKWARDS
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernel_sizes(monkeypatch, setting, k, dtype, layout):
    # Every pass, forward and backward, both modes.
    from convmixer_kernels.triton import tuning

    monkeypatch.setenv(tuning.TENSOR_CORES_ENV, setting)
    case = Case(n=3, c=37, h=13, w=35, k=k, dtype=dtype, layout=layout, device="cuda")
    for training in (False, True):
        check_backend(make_inputs(case), "triton", training=training)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c,k", ((768, 7), (1536, 9)))
@_BACKWARDS
@GPU_QUICK
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_key_shapes_bfloat16_deterministic(monkeypatch, setting, c, k, layout):
    from convmixer_kernels.triton import tuning

    monkeypatch.setenv(tuning.TENSOR_CORES_ENV, setting)
    inputs = make_inputs(Case(n=4, c=c, h=32, w=32, k=k, dtype=torch.bfloat16, layout=layout, device="cuda"))
    check_backend(inputs, "triton", training=False, grads=False)
    assert torch.equal(_eval_block(inputs), _eval_block(inputs))
    first, second = (run_block(inputs, training=True, backend="triton", grads=True) for _ in range(2))
    for name in ("y", "dx", "dweight", "dbias", "dgamma", "dbeta"):
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=("bfloat16", "float16"))
@GPU_QUICK
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_nan_and_inf_reach_only_their_windows(layout, dtype):
    _assert_nan_inf_as_eager(layout, "cuda", dtype, 5)


def test_autotune_keeps_the_configs_within_the_resource_budget(monkeypatch):
    # On a GPU the tensor-core kernels' autotuner compiles each config first and times
    # only those within the budget (tuning._prune); here the compile is a stand-in that
    # reports registers and spills per config, and the tensors pass for CUDA ones.
    from types import SimpleNamespace

    from convmixer_kernels.triton import tuning

    configs = [tuning._config(4, BLOCK_M=32), tuning._config(8, BLOCK_M=64), tuning._config(4, BLOCK_M=64),
               tuning._config(8, BLOCK_M=128)]
    compiled = {32: (96, 0), 64: (168, 0), 128: (120, 8)}  # BLOCK_M -> (registers, spills)

    class Kernel:
        def warmup(self, *, grid, BLOCK_M, num_warps, **kwargs):
            regs, spills = compiled[BLOCK_M]
            return SimpleNamespace(n_regs=regs, n_spills=spills, metadata=SimpleNamespace(shared=4096),
                                   _init_handles=lambda: None)

    monkeypatch.setattr(tuning, "_device", lambda named_args: torch.device("cuda", 0))
    monkeypatch.setattr(tuning, "_shared_per_sm", lambda device: tuning.SHARED_PER_SM[90])
    named = {"x_ptr": torch.empty(1), "N": 128, "C": 768, "H": 32, "W": 32}
    kept = tuning._prune(Kernel(), configs, named, K=7)
    # 168 registers leave 8 resident warps at 8 a CTA and 12 at 4; 128 rows spill; 96
    # registers at 4 warps leave 20.
    assert [(c.kwargs["BLOCK_M"], c.num_warps) for c in kept] == [(32, 4)]
    assert tuning.resident_warps(128, 8, 9216, tuning.SHARED_PER_SM[90]) == 16
    assert tuning.resident_warps(129, 4, 0, tuning.SHARED_PER_SM[80]) == 12
    # Without a budget (the CUDA-core kernels), or when nothing fits it, the configs stay.
    assert tuning._prune(None, configs, named, K=7) == configs
    compiled.update({32: (200, 0)})
    assert tuning._prune(Kernel(), configs, named, K=7) == configs
