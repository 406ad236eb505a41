"""Training a tiny ConvMixer with and without the fused blocks from one seed gives the
same loss curve (within float32 rounding growth)."""

import torch
from torch import nn

from convmixer_kernels import ConvMixer


def _train(fused, steps=30):
    torch.manual_seed(0)
    model = ConvMixer(16, 2, kernel_size=5, patch_size=2, num_classes=3, fused=fused, backend="cpu")
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 3, 16, 16, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        labels = torch.randint(0, 3, (16,), generator=g)
        x = centers[labels] + 0.8 * torch.randn(16, 3, 16, 16, generator=g)
        loss = nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_fused_and_eager_training_agree():
    fused, eager = _train(True), _train(False)
    for step, (a, b) in enumerate(zip(fused, eager)):
        # The gap may grow with steps (rounding differences compound), never jump.
        assert abs(a - b) <= 1e-4 * (1 + step), (step, a, b)
    assert fused[-1] < 0.5 * fused[0]
