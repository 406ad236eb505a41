"""The CPU kernels' results do not depend on the thread count: work is split into planes
or tiles whose partial sums are merged in a fixed order, whatever thread ran them."""

import pytest
import torch

from tests.harness.parity import Case, make_inputs, run_block


@pytest.mark.parametrize("layout", ("nchw", "channels_last", "sliced"))
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
def test_cpu_results_are_bitwise_equal_for_1_2_and_3_threads(layout, training):
    inputs = make_inputs(Case(n=3, c=37, h=13, w=11, k=7, layout=layout))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run_block(inputs, training=training, backend="cpu", grads=True))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for name, value in results[0].items():
            if value is not None:
                assert torch.equal(value, other[name]), f"{name} differs between thread counts"
