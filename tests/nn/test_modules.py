"""FusedMixerBlock, ConvMixer and swap_mixer_blocks against plain eager modules with
shared weights, on structures built as timm, mmpretrain and the official code build them."""

import copy

import pytest
import torch
from torch import nn

from convmixer_kernels import ConvMixer, FusedMixerBlock, swap_mixer_blocks, unswap_mixer_blocks
from convmixer_kernels.reference import activation_module, plain_mixer_block

BLOCK_KEYS = {"fn.0.weight", "fn.0.bias", "fn.2.weight", "fn.2.bias", "fn.2.running_mean",
              "fn.2.running_var", "fn.2.num_batches_tracked"}


class Residual(nn.Module):
    """As the official code, timm and mmpretrain each define it."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def _mixer(dim, k, act="gelu", **bn_kwargs):
    return Residual(nn.Sequential(nn.Conv2d(dim, dim, k, groups=dim, padding="same"),
                                  activation_module(act), nn.BatchNorm2d(dim, **bn_kwargs)))


def _stage(dim, k, act):
    return nn.Sequential(_mixer(dim, k, act), nn.Conv2d(dim, dim, 1), activation_module(act), nn.BatchNorm2d(dim))


class TimmLike(nn.Module):
    def __init__(self, dim=12, depth=2, k=5, p=2, act="gelu", classes=7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, p, stride=p), activation_module(act), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[_stage(dim, k, act) for _ in range(depth)])
        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.pooling(self.blocks(self.stem(x))).flatten(1))


class MMPretrainLike(nn.Module):
    def __init__(self, dim=12, depth=2, k=4, p=2, act="relu", classes=7):
        super().__init__()
        backbone = nn.Module()
        backbone.stem = nn.Sequential(nn.Conv2d(3, dim, p, stride=p), activation_module(act), nn.BatchNorm2d(dim))
        backbone.stages = nn.Sequential(*[_stage(dim, k, act) for _ in range(depth)])
        self.backbone = backbone
        self.neck = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Module()
        self.head.fc = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.backbone.stages(self.backbone.stem(x))
        return self.head.fc(self.neck(x).flatten(1))


def official_like(dim=12, depth=2, k=3, p=2, classes=7):
    act = "gelu"
    return nn.Sequential(
        nn.Conv2d(3, dim, p, stride=p), activation_module(act), nn.BatchNorm2d(dim),
        *[nn.Sequential(_mixer(dim, k, act), nn.Conv2d(dim, dim, 1), activation_module(act), nn.BatchNorm2d(dim))
          for _ in range(depth)],
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(dim, classes),
    )


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6, msg=key)


def _train_and_compare(plain, fused, steps=3, shape=(4, 3, 16, 16)):
    """A few SGD steps on both from the same weights: outputs, gradients, state agree."""
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.05)
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.05)
    for step in range(steps):
        x = torch.randn(*shape)
        for model in (plain, fused):
            model.train()
        yp, yf = plain(x), fused(x)
        torch.testing.assert_close(yf, yp, rtol=1e-4, atol=1e-5)
        yp.square().mean().backward()
        yf.square().mean().backward()
        for (name, pp), pf in zip(plain.named_parameters(), fused.parameters()):
            torch.testing.assert_close(pf.grad, pp.grad, rtol=1e-3, atol=1e-5, msg=f"step {step} {name}")
        opt_p.step(), opt_f.step(), opt_p.zero_grad(), opt_f.zero_grad()
    _assert_same_state(plain, fused)
    plain.eval(), fused.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-4, atol=1e-5)


def test_fused_block_state_dict_keys():
    block = FusedMixerBlock(8, 7, activation="relu")
    assert set(block.state_dict()) == BLOCK_KEYS
    assert set(plain_mixer_block(8, 7).state_dict()) == BLOCK_KEYS
    assert block.activation == "relu"


@pytest.mark.parametrize("bn_kwargs", [
    {},
    {"momentum": None},                # cumulative average: 1 / num_batches_tracked
    {"affine": False},
    {"track_running_stats": False},    # batch statistics in eval too
    {"eps": 1e-3, "momentum": 0.5},
], ids=("default", "momentum_none", "affine_false", "no_running_stats", "eps_momentum"))
def test_fused_block_matches_plain(bn_kwargs):
    plain = _randomize_bn(_mixer(10, 5, "gelu", **bn_kwargs))
    fused = FusedMixerBlock.from_sequential(copy.deepcopy(plain).fn, backend="cpu")
    _train_and_compare(plain, fused, shape=(3, 10, 9, 9))
    if plain.fn[2].track_running_stats:
        assert int(fused.fn[2].num_batches_tracked) == 3


@pytest.mark.parametrize("make,expected", [
    (lambda: TimmLike(), 2),
    (lambda: MMPretrainLike(), 3),
    (lambda: official_like(), 2),
], ids=("timm", "mmpretrain", "official"))
def test_swap_keeps_outputs_and_state_dict(make, expected):
    torch.manual_seed(0)
    model = _randomize_bn(make())
    if isinstance(model, MMPretrainLike):
        model.backbone.stages.append(_stage(12, 4, "relu"))
    reference = copy.deepcopy(model)
    keys_before = list(model.state_dict())
    assert swap_mixer_blocks(model, backend="cpu") == expected
    assert list(model.state_dict()) == keys_before
    assert sum(isinstance(m, FusedMixerBlock) for m in model.modules()) == expected
    assert swap_mixer_blocks(model) == 0  # already swapped
    _train_and_compare(reference, model)
    assert unswap_mixer_blocks(model) == expected
    assert not any(isinstance(m, FusedMixerBlock) for m in model.modules())
    _assert_same_state(reference, model)


def test_swap_leaves_other_blocks_alone():
    dim = 6
    blocks = nn.Sequential(
        Residual(nn.Sequential(nn.Conv2d(dim, dim, 3, padding="same"), nn.GELU(), nn.BatchNorm2d(dim))),  # not depthwise
        Residual(nn.Sequential(nn.Conv2d(dim, dim, 3, groups=dim, padding=1), nn.Hardswish(), nn.BatchNorm2d(dim))),
        Residual(nn.Sequential(nn.Conv2d(dim, dim, 4, groups=dim, padding=2), nn.GELU(), nn.BatchNorm2d(dim))),  # even k, int pad
        Residual(nn.Sequential(nn.Conv2d(dim, dim, 3, groups=dim, padding=1, stride=2), nn.GELU(), nn.BatchNorm2d(dim))),
        # SyncBatchNorm: fused, and the block synchronizes over its group (tests/ops/test_sync.py).
        Residual(nn.Sequential(nn.Conv2d(dim, dim, 3, groups=dim, padding="same"), nn.GELU(), nn.SyncBatchNorm(dim))),
        Residual(nn.Sequential(nn.Conv2d(dim, dim, 3, groups=dim, padding=1), nn.GELU(), nn.BatchNorm2d(dim))),  # odd k, int pad: ok
    )
    assert swap_mixer_blocks(blocks) == 2
    assert isinstance(blocks[4], FusedMixerBlock) and isinstance(blocks[5], FusedMixerBlock)
    assert not any(isinstance(b, FusedMixerBlock) for b in blocks[:4])


def test_from_sequential_rejects_what_it_cannot_fuse():
    seq = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2, padding="same"), nn.GELU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"fn\[0\] must be depthwise"):
        FusedMixerBlock.from_sequential(seq)


@pytest.mark.parametrize("activation,k,p", [("gelu", 5, 2), ("relu", 4, 4)])
def test_convmixer_fused_equals_plain(activation, k, p):
    torch.manual_seed(1)
    plain = _randomize_bn(ConvMixer(12, 2, kernel_size=k, patch_size=p, num_classes=5, activation=activation, fused=False))
    fused = ConvMixer(12, 2, kernel_size=k, patch_size=p, num_classes=5, activation=activation, fused=True, backend="cpu")
    fused.load_state_dict(plain.state_dict())
    timm_keys = {"stem.0.weight", "blocks.0.0.fn.0.weight", "blocks.1.0.fn.2.running_var", "blocks.1.1.weight",
                 "blocks.1.3.num_batches_tracked", "head.weight", "head.bias"}
    assert timm_keys <= set(fused.state_dict())
    _train_and_compare(plain, fused, steps=2)
