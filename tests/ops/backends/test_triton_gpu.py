"""The triton backend on a CUDA GPU, beyond the parity sweep that tests/ops/test_parity.py
runs on it (tests/harness/sweep.py's GPU: every dtype, both layouts and strided inputs, k
from 1 to 31): the published widths (C up to 1536 at 32x32), every autotuning config,
the autotuner's own choice, determinism, opcheck of the custom ops,
torch.compile(fullgraph=True) and CUDA graph capture.

Run with:  pytest -m gpu tests/ops/backends/test_triton_gpu.py
Skipped (never failing at collection) where there is no CUDA GPU or no triton.
"""

import copy
import importlib.util
import itertools

import pytest
import torch

from tests.harness.parity import (GPU_QUICK, Case, assert_compiled_block_matches, check_backend, make_inputs,
                                  poisoned_outputs)
from tests.harness import ROOT

# Nothing here imports triton at collection: on a CPU-only machine
# test_triton_interpreter.py must set TRITON_INTERPRET=1 before triton is first imported.
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"),
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _dtype_id(dtype):
    return str(dtype)[6:]


def _case(**kw):
    return Case(device="cuda", **kw)


# The published widths; the quick GPU pass takes the benchmark's two in bf16.
WIDTH_CASES = [
    pytest.param(c, k, dtype, id=f"{c}-{k}-{_dtype_id(dtype)}",
                 marks=[GPU_QUICK] if dtype == torch.bfloat16 and (c, k) in ((768, 7), (1536, 9)) else [])
    for c, k in ((768, 7), (1536, 9), (1024, 9), (257, 31)) for dtype in DTYPES
]


@pytest.mark.parametrize("c,k,dtype", WIDTH_CASES)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_convmixer_widths(c, k, layout, dtype):
    for training in (False, True):
        check_backend(make_inputs(_case(n=2, c=c, h=32, w=32, k=k, dtype=dtype, layout=layout)), "triton",
                      training=training)


def _all_tunables():
    from convmixer_kernels.triton import backend

    return [(layout, name, tunable) for layout, kernels in backend._KERNELS.items()
            for name, tunable in vars(kernels).items()]


@pytest.mark.parametrize("k", (7, 13))
def test_every_config(monkeypatch, k):
    # The parity runs use the fixed defaults (poisoning turns determinism on, which
    # turns autotuning off): here each kernel runs with each of its configs in turn.
    tunables = _all_tunables()
    for index in range(max(len(t.configs) for _, _, t in tunables)):
        for _, _, tunable in tunables:
            monkeypatch.setattr(tunable, "default", tunable.configs[index % len(tunable.configs)])
        for layout, training in itertools.product(("nchw", "channels_last"), (False, True)):
            case = _case(n=2, c=130, h=19, w=21, k=k, dtype=torch.bfloat16, layout=layout)
            check_backend(make_inputs(case), "triton", training=training)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_autotuned_matches_reference(monkeypatch, layout):
    # Outside poisoned_outputs, so the autotuner itself picks the configs.
    import convmixer_kernels as cmk
    from convmixer_kernels.reference import mixer_block_reference
    from tests.harness.parity import rel_err

    monkeypatch.setenv("CONVMIXER_KERNELS_TRITON_AUTOTUNE", "1")
    inputs = make_inputs(_case(n=4, c=96, h=16, w=16, k=7, dtype=torch.bfloat16, layout=layout))
    ref = inputs.to(dtype=torch.float64, device="cpu")
    results = []
    for inp, fn in ((inputs, lambda *a, **kw: cmk.mixer_block(*a, **kw, backend="triton")),
                    (ref, mixer_block_reference)):
        x = inp.x.detach().requires_grad_()
        y = fn(x, inp.weight, inp.bias, inp.gamma, inp.beta, inp.running_mean.clone(), inp.running_var.clone(),
               training=True)
        y.backward(inp.grad_out)
        results.append((y, x.grad))
    (y, dx), (y64, dx64) = results
    assert rel_err(y, y64) < 1.6e-2
    assert rel_err(dx, dx64) < 1.6e-2


@GPU_QUICK
def test_deterministic():
    import convmixer_kernels as cmk

    inputs = make_inputs(_case(n=4, c=64, h=32, w=32, k=9, dtype=torch.bfloat16, layout="channels_last"))
    results = []
    for _ in range(2):
        x = inputs.x.detach().clone().requires_grad_()
        w = inputs.weight.detach().clone().requires_grad_()
        with poisoned_outputs():
            y = cmk.mixer_block(x, w, inputs.bias, inputs.gamma, inputs.beta, inputs.running_mean.clone(),
                                inputs.running_var.clone(), training=True, backend="triton")
            y.backward(inputs.grad_out)
        results.append((y.detach(), x.grad, w.grad))
    for first, second in zip(*results):
        assert torch.equal(first, second)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("optional", (True, False), ids=("all_params", "no_optional"))
def test_opcheck(layout, optional):
    import convmixer_kernels  # noqa: F401  (registers the ops)

    ops = torch.ops.convmixer_kernels
    inputs = make_inputs(_case(n=2, c=8, h=7, w=9, k=3, layout=layout, bias=optional, affine=optional))
    x = inputs.x.detach().requires_grad_()
    w = inputs.weight.detach().requires_grad_()
    rm, rv = inputs.running_mean, inputs.running_var
    torch.library.opcheck(ops.mixer_block_eval.default,
                          (x, w, inputs.bias, inputs.gamma, inputs.beta, rm, rv, 1e-5, "gelu", "triton"))
    torch.library.opcheck(ops.mixer_block_train.default,
                          (x, w, inputs.bias, inputs.gamma, inputs.beta, 1e-5, "silu", "triton"))
    for batch_stats in (True, False):
        torch.library.opcheck(ops.mixer_block_backward.default,
                              (inputs.grad_out, inputs.x, inputs.weight, inputs.bias, inputs.gamma, rm, rv, 1e-5,
                               batch_stats, "relu", "triton"))


@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=_dtype_id)
def test_compile_fullgraph(training, dtype):
    from convmixer_kernels import FusedMixerBlock

    torch.manual_seed(0)
    block = FusedMixerBlock(48, 7, activation="gelu", backend="triton").to("cuda", dtype).train(training)
    x = torch.randn(4, 48, 16, 16, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    assert_compiled_block_matches(block, x)


@GPU_QUICK
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
def test_cuda_graph_capture_forward_backward(training):
    from convmixer_kernels import FusedMixerBlock

    torch.manual_seed(0)
    block = FusedMixerBlock(32, 9, activation="gelu", backend="triton").cuda().train(training)
    reference = copy.deepcopy(block)
    static_x = torch.randn(4, 32, 16, 16, device="cuda", requires_grad=True)
    static_dy = torch.randn(4, 32, 16, 16, device="cuda")

    # Warm up on a side stream (compiles and autotunes every kernel), then capture.
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            block(static_x).backward(static_dy)
    torch.cuda.current_stream().wait_stream(stream)
    block.zero_grad(set_to_none=True)
    static_x.grad = None
    block.load_state_dict(reference.state_dict())

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = block(static_x)
        static_y.backward(static_dy)

    for _ in range(2):
        x = torch.randn_like(static_x)
        dy = torch.randn_like(static_dy)
        static_x.data.copy_(x)
        static_dy.copy_(dy)
        graph.replay()
        x_ref = x.clone().requires_grad_()
        y_ref = reference(x_ref)
        y_ref.backward(dy)
        torch.testing.assert_close(static_y, y_ref)
        torch.testing.assert_close(static_x.grad, x_ref.grad)
        torch.testing.assert_close(block.fn[0].weight.grad, reference.fn[0].weight.grad)
        torch.testing.assert_close(block.fn[2].running_mean, reference.fn[2].running_mean)
        reference.zero_grad(set_to_none=True)


@GPU_QUICK
def test_gpu_timing_helpers():
    import os
    import sys

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_timing

    device = torch.device("cuda")
    x = torch.randn(1 << 20, device=device)
    median, p20, p80 = gpu_timing.cuda_time(lambda i: x.mul_(1.0), warmup=2, repeats=10)
    assert 0 < p20 <= median <= p80
    assert gpu_timing.copy_bandwidth_gbps(device, nbytes=64 << 20) > 0
    assert gpu_timing.peak_memory_bytes(lambda: torch.empty(1 << 20, device=device)) >= 4 << 20
    assert gpu_timing.rotation_count(1 << 20, device) >= 2
