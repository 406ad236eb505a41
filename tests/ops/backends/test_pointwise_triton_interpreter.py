"""The Triton GEMM-with-epilogue (convmixer_kernels/triton/gemm_epilogue.py) under
TRITON_INTERPRET=1 (tests/conftest.py sets it on a machine without a GPU) against the
float64 reference: eval, frozen BN with gradients and training, every activation, row and
column counts that leave partial tiles, outputs poisoned."""

import os

import pytest
import torch

from convmixer_kernels.ops.gemm_epilogue import gemm_epilogue
from convmixer_kernels.reference import ACTIVATIONS, gemm_epilogue_reference
from tests.harness.parity import poisoned_outputs

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("mode", ("eval", "frozen", "train"))
def test_triton_matches_reference(activation, mode):
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    # 70 rows and 67 columns: two row tiles and two column tiles of 64, both partial; K 40: two K steps.
    x, w = torch.randn(70, 40, generator=gen), torch.randn(67, 40, generator=gen) / 40 ** 0.5
    b, g, be = torch.randn(67, generator=gen), torch.rand(67, generator=gen) + 0.5, torch.randn(67, generator=gen)
    rm, rv = torch.randn(67, generator=gen) * 0.2, torch.rand(67, generator=gen) + 0.5
    training = mode == "train"
    leaves = [t.clone().requires_grad_(mode != "eval") for t in (x, w, b, g, be)]
    stats = [rm.clone(), rv.clone()]
    with poisoned_outputs():
        y = gemm_epilogue(*leaves, *stats, training=training, activation=activation, backend="triton")
    ref_leaves = [t.double().requires_grad_(mode != "eval") for t in (x, w, b, g, be)]
    ref_stats = [rm.double(), rv.double()]
    ref = gemm_epilogue_reference(*ref_leaves, *ref_stats, training=training, activation=activation)
    assert y.isfinite().all(), f"unwritten outputs, seed {seed}"
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=2e-5, msg=f"seed {seed}")
    for got, want in zip(stats, ref_stats):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6, msg=f"running stats, seed {seed}")
    if mode != "eval":
        dy = torch.randn(y.shape, generator=gen)
        y.backward(dy)
        ref.backward(dy.double())
        for name, a, r in zip(("x", "weight", "bias", "gamma", "beta"), leaves, ref_leaves):
            torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-4, msg=f"d{name}, seed {seed}")
