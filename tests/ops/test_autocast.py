"""Under autocast the fused block behaves as the eager block: same output dtype, values
within the autocast dtype's parity bound of the float64 reference."""

import pytest
import torch

from convmixer_kernels import FusedMixerBlock
from convmixer_kernels.reference import plain_mixer_block
from tests.harness.parity import ATOL, rel_err


@pytest.mark.parametrize("backend", ("cpu", "eager"))
@pytest.mark.parametrize("x_dtype", (torch.float32, torch.bfloat16), ids=("x_float32", "x_bfloat16"))
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
def test_autocast_bfloat16(backend, x_dtype, training):
    torch.manual_seed(0)
    plain = plain_mixer_block(12, 5).train(training)
    fused = FusedMixerBlock.from_sequential(plain.fn, backend=backend)
    ref = plain_mixer_block(12, 5).double().train(training)
    ref.load_state_dict(plain.state_dict())
    x = torch.randn(2, 12, 9, 9).to(x_dtype)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_eager = plain(x)
        plain.load_state_dict(state)
        y_fused = fused(x)
    y_ref = ref(x.double())
    assert y_fused.dtype == y_eager.dtype == x_dtype
    assert rel_err(y_fused, y_ref) <= 2 * rel_err(y_eager, y_ref) + ATOL[torch.bfloat16]
