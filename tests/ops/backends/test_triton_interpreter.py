"""The triton backend on a CPU-only machine, under TRITON_INTERPRET=1, beyond the parity
sweep that tests/ops/test_parity.py runs on it (tests/harness/sweep.py's INTERPRETER:
small shapes, since the interpreter runs every program of a grid in Python): tiles smaller
than the data, the weight gradient's groups of taps, determinism, torch.compile and the
reasons it gives where it cannot run. Against reference.py in float64
(tests/harness/parity.py: fresh inputs, poisoned outputs, forward, running statistics and
all gradients).
"""

import os
import sys

import torch

# TRITON_INTERPRET must be set before triton is first imported: triton.jit (triton's own
# library functions included) picks the interpreter when a function is defined. A
# conftest.py that sets it keeps the order independent of which test module comes first.
_IMPORTED_TOO_EARLY = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from tests.harness.parity import (  # noqa: E402
    Case, assert_compiled_block_matches, check_backend, make_inputs, poisoned_outputs)

import convmixer_kernels as cmk  # noqa: E402

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a CUDA GPU is present: tests/ops/backends/test_triton_gpu.py covers the triton backend"
)
_needs_interpreter = pytest.mark.skipif(_IMPORTED_TOO_EARLY, reason="see test_kernels_run_interpreted")


def test_kernels_run_interpreted():
    from triton.runtime.interpreter import InterpretedFunction

    from convmixer_kernels.triton import backend

    assert not _IMPORTED_TOO_EARLY and isinstance(backend.cl.forward_apply, InterpretedFunction), (
        "triton was imported before this module could set TRITON_INTERPRET=1 (another test module "
        "imported it at collection): set it in conftest.py or in the environment"
    )
    assert cmk.ops.backends.why_unavailable("triton", torch.device("cpu"), torch.float32) is None


@pytest.fixture
def small_tiles(monkeypatch):
    """Every kernel on tiles smaller than the data: several channel blocks, several tiles
    per region and partial tiles at every edge."""
    from convmixer_kernels.triton import backend, tuning

    tiles = {
        "channels_last": tuning._config(1, BLOCK_H=2, BLOCK_W=4, BLOCK_C=4),
        "nchw": tuning._config(1, BLOCK_H=4, BLOCK_W=4, RB=2),
    }
    dw_tiles = {
        "channels_last": tuning._config(1, BLOCK_H=2, BLOCK_W=2, BLOCK_C=4),
        "nchw": tuning._config(1, BLOCK_H=4, BLOCK_W=2, RB=2),
    }
    for layout, kernels in backend._KERNELS.items():
        for name, tunable in vars(kernels).items():
            monkeypatch.setattr(tunable, "default", (dw_tiles if name == "backward_dw" else tiles)[layout])


@_needs_interpreter
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_small_tiles_many_blocks_and_bands(small_tiles, layout):
    # channels_last: C = 6 is two channel blocks of 4, the last ragged. H = 10 with N = 1
    # splits into two bands (reductions over several regions); W = 5 leaves a partial tile.
    for training in (False, True):
        case = Case(n=1, c=6 if layout == "channels_last" else 2, h=10, w=5, k=3, layout=layout)
        check_backend(make_inputs(case), "triton", training=training)


@_needs_interpreter
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("k", (9, 13))
def test_large_kernel_splits_weight_gradient_into_groups(layout, k):
    # k = 9 and 13 have more weight taps than a pass-3b program holds accumulators for, so
    # the taps split into groups of rows (columns for NCHW), 5 + 5 for 9 rows and 4 x 4 for
    # 13, the last group running past k - 1 (tuning.dw_group).
    # Frozen BN: pass 3b is the same, and M = 20 values per channel would leave the
    # batch-statistics gradients of the conv bias to rounding noise (BatchNorm cancels the
    # conv's shift: tests/harness/parity.py, summand_scales).
    case = Case(n=1, c=2, h=4, w=5, k=k, layout=layout)
    check_backend(make_inputs(case), "triton", training=False)


@_needs_interpreter
def test_deterministic():
    inputs = make_inputs(Case(n=2, c=3, h=7, w=7, k=3, layout="channels_last"))
    results = []
    for _ in range(2):
        x = inputs.x.detach().clone().requires_grad_()
        w = inputs.weight.detach().clone().requires_grad_()
        rm, rv = inputs.running_mean.clone(), inputs.running_var.clone()
        with poisoned_outputs():
            y = cmk.mixer_block(x, w, inputs.bias, inputs.gamma, inputs.beta, rm, rv, training=True,
                                backend="triton")
            y.backward(inputs.grad_out)
        results.append((y.detach(), x.grad, w.grad, rm, rv))
    for first, second in zip(*results):
        assert torch.equal(first, second)


@_needs_interpreter
def test_compile_fullgraph():
    # The op traces without a graph break with the triton backend too (its fake
    # implementation); the compiled forward and backward give the eager module's numbers.
    torch.manual_seed(0)
    block = cmk.FusedMixerBlock(3, 3, activation="gelu", backend="triton").train()
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    assert_compiled_block_matches(block, x, backend="aot_eager")


@_needs_interpreter
def test_unavailable_reasons(monkeypatch):
    backend = cmk.ops.backends.get_backend("triton")

    assert "float64" in backend.why_unavailable(torch.device("cpu"), torch.float64)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET" in backend.why_unavailable(torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        x = torch.randn(1, 2, 3, 3)
        cmk.mixer_block(x, torch.randn(2, 1, 3, 3), None, None, None, None, None, training=True,
                        backend="triton")
