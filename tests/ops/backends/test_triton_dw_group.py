"""The Triton weight-gradient pass's tap-row grouping (triton/tuning.py dw_group): within
the accumulator budget, the fewest programs, and the rows spread evenly so that the
masked rows past k stay below one per program."""

import pytest

from convmixer_kernels.triton import tuning


@pytest.mark.parametrize("k", range(1, 32))
def test_groups_fit_the_budget_and_waste_less_than_a_row_per_program(k):
    group = tuning.dw_group(k)
    programs = -(-k // group)
    assert 1 <= group <= k
    assert group * k <= tuning.DW_ACCUMULATORS or group == 1
    fewest = -(-k // min(k, tuning.DW_ACCUMULATORS // k))
    assert programs == fewest
    assert programs * group - k < programs


def test_k9_takes_two_groups_of_five():
    # min(k, 64 // k) = 7 would run two groups of 7: 14 rows for 9.
    assert tuning.dw_group(9) == 5
