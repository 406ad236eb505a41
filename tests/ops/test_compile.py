"""torch.compile(fullgraph=True) traces the fused op without a graph break, forward and
backward, and gives eager's numbers."""

import copy

import pytest
import torch

from convmixer_kernels import ConvMixer, FusedMixerBlock
from tests.harness.parity import assert_compiled_block_matches


@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
def test_compile_fused_block(training):
    torch.manual_seed(0)
    block = FusedMixerBlock(6, 4, activation="gelu", backend="cpu").train(training)
    assert_compiled_block_matches(block, torch.randn(2, 6, 9, 9), backend="inductor")


def test_compile_small_convmixer():
    torch.manual_seed(0)
    model = ConvMixer(8, 2, kernel_size=3, patch_size=2, num_classes=4, backend="cpu")
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 12, 12)
    loss, loss_c = model(x).logsumexp(1).sum(), compiled(x).logsumexp(1).sum()
    torch.testing.assert_close(loss_c, loss)
    loss.backward()
    loss_c.backward()
    for (name, p), pc in zip(model.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(pc.grad, p.grad, msg=name)
