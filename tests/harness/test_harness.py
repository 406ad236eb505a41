"""The parity harness itself must be able to fail."""

import pytest
import torch

from tests.harness.parity import ATOL, Case, assert_close, make_inputs, poisoned_outputs, rel_err, run_block, summand_scales


def test_poisoning_fills_empty_with_nan():
    with poisoned_outputs():
        assert torch.empty(64).isnan().all()
        assert torch.empty_like(torch.ones(3, 4, 5, 6), memory_format=torch.channels_last).isnan().all()
    assert not torch.are_deterministic_algorithms_enabled()


def test_fresh_inputs_differ_and_are_not_zero():
    a = make_inputs(Case(n=1, c=3, h=5, w=5, k=3))
    b = make_inputs(Case(n=1, c=3, h=5, w=5, k=3))
    assert a.seed != b.seed and not torch.equal(a.x, b.x)
    assert (a.x != 0).all()


def test_sliced_layout_is_neither_dense_format():
    x = make_inputs(Case(n=2, c=3, h=5, w=5, k=3, layout="sliced")).x
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)


def test_assert_close_rejects_a_wrong_result():
    inputs = make_inputs(Case(n=1, c=3, h=5, w=5, k=3))
    ref = torch.randn(10, dtype=torch.float64)
    with pytest.raises(AssertionError):
        assert_close("y", (ref + 1e-3).float(), ref, ref.float(), torch.float32, inputs)
    with pytest.raises(AssertionError, match="non-finite"):
        bad = ref.float().clone()
        bad[3] = float("nan")
        assert_close("y", bad, ref, ref.float(), torch.float32, inputs)


def test_summand_scales_bound_the_gradients_and_still_see_one_term():
    inputs = make_inputs(Case(n=2, c=5, h=7, w=7, k=1))
    ref = run_block(inputs.to(dtype=torch.float64), training=True, backend=None, grads=True)
    scales = summand_scales(inputs, training=True)
    count = 2 * 7 * 7
    for name in ("dweight", "dbias"):
        assert scales[name].shape == ref[name].shape
        assert (scales[name] >= ref[name].abs() * (1 - 1e-12)).all()
        # An error the size of an average summand is far above the float32 bound.
        off_by_a_term = ref[name] + scales[name] / count
        assert rel_err(off_by_a_term, ref[name], scales[name]) > 100 * ATOL[torch.float32]
