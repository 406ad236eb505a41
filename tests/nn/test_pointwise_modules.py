"""FusedSequential (the pointwise block and the stem through gemm_epilogue), ConvMixer's
fused=True / "mixer" / False, and swap_mixer_blocks' counts per kind, against plain eager
modules with shared weights."""

import copy

import pytest
import torch
from torch import nn

from convmixer_kernels import ConvMixer, FusedMixerBlock, swap_mixer_blocks, unswap_mixer_blocks
from convmixer_kernels.fused_sequential import FusedSequential
from tests.harness.parity import assert_compiled_block_matches
from tests.nn.test_modules import MMPretrainLike, TimmLike, _randomize_bn, _stage, _train_and_compare, official_like


@pytest.mark.parametrize("make,counts", [
    (lambda: TimmLike(), dict(mixer=2, pointwise=2, stem=1)),
    (lambda: MMPretrainLike(), dict(mixer=3, pointwise=3, stem=1)),
    # The official model is itself the flat Sequential that holds the stem: not replaced.
    (lambda: official_like(), dict(mixer=2, pointwise=2, stem=0)),
], ids=("timm", "mmpretrain", "official"))
def test_swap_counts_every_kind_and_keeps_state(make, counts):
    torch.manual_seed(0)
    model = _randomize_bn(make())
    if isinstance(model, MMPretrainLike):
        model.backbone.stages.append(_stage(12, 4, "relu"))
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    swapped = swap_mixer_blocks(model, backend="cpu")
    assert swapped.by_kind == counts and swapped == counts["mixer"]
    assert list(model.state_dict()) == keys
    assert sum(len(m.fused_starts) for m in model.modules() if isinstance(m, FusedSequential)) == \
        counts["pointwise"] + counts["stem"]
    assert swap_mixer_blocks(model).by_kind == dict(mixer=0, pointwise=0, stem=0)
    _train_and_compare(reference, model)
    assert unswap_mixer_blocks(model).by_kind == counts
    assert not any(isinstance(m, (FusedSequential, FusedMixerBlock)) for m in model.modules())
    assert list(model.state_dict()) == keys


def test_swap_kinds_chooses_what_is_swapped():
    model = TimmLike()
    assert swap_mixer_blocks(model, kinds=("mixer",)).by_kind == dict(mixer=2, pointwise=0, stem=0)
    assert type(model.stem) is nn.Sequential
    assert swap_mixer_blocks(model, kinds=("stem",)).by_kind == dict(mixer=0, pointwise=0, stem=1)
    with pytest.raises(ValueError, match=r"kinds must be among"):
        swap_mixer_blocks(model, kinds=("head",))


def test_swap_leaves_a_hooked_run_alone():
    model = TimmLike()
    model.blocks[0][1].register_forward_hook(lambda m, i, o: None)
    with pytest.warns(UserWarning, match=r"left 'blocks.0\[1:4\]' unswapped: fn\[0\] carries a forward hook"):
        counts = swap_mixer_blocks(model)
    assert counts.by_kind == dict(mixer=2, pointwise=1, stem=1)
    fused = FusedSequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    fused[2].register_forward_pre_hook(lambda m, i: None)
    with pytest.raises(RuntimeError, match=r"fused run at index 0..2 carries a hook"):
        fused(torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("bn_kwargs", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}],
                         ids=("default", "momentum_none", "affine_false", "no_running_stats"))
def test_fused_sequential_follows_batchnorm_rules(bn_kwargs):
    torch.manual_seed(2)
    plain = _randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), nn.GELU(), nn.BatchNorm2d(8, **bn_kwargs),
                                        nn.Conv2d(8, 6, 1), nn.SiLU(), nn.BatchNorm2d(6, **bn_kwargs)))
    fused = FusedSequential.from_sequential(copy.deepcopy(plain))
    assert fused.kinds() == ["stem", "pointwise"]
    _train_and_compare(plain, fused, shape=(3, 3, 9, 9))
    # Frozen BatchNorm inside a training model (fine-tuning): running statistics, no update.
    plain.train(), fused.train()
    for model in (plain, fused):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    x = torch.randn(3, 3, 9, 9)
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.state_dict(), plain.state_dict())


def test_sync_batchnorm_run_uses_the_plain_modules():
    seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.SyncBatchNorm(4)).eval()
    fused = FusedSequential.from_sequential(copy.deepcopy(seq))
    assert fused.fused_starts == (0,)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(fused(x), seq(x))


def test_convmixer_fused_modes():
    torch.manual_seed(1)
    plain = _randomize_bn(ConvMixer(12, 2, kernel_size=5, patch_size=2, num_classes=5, fused=False))
    everything = ConvMixer(12, 2, kernel_size=5, patch_size=2, num_classes=5, fused=True, backend="cpu")
    mixer_only = ConvMixer(12, 2, kernel_size=5, patch_size=2, num_classes=5, fused="mixer", backend="cpu")
    assert isinstance(everything.stem, FusedSequential) and isinstance(everything.blocks[1], FusedSequential)
    assert type(mixer_only.stem) is nn.Sequential and isinstance(mixer_only.blocks[1][0], FusedMixerBlock)
    for model in (everything, mixer_only):
        model.load_state_dict(plain.state_dict())
        _train_and_compare(copy.deepcopy(plain), model, steps=2)
    with pytest.raises(ValueError, match=r"fused must be True, False or 'mixer'"):
        ConvMixer(12, 2, fused="all")


@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
def test_compile_fullgraph_fused_sequential(training):
    torch.manual_seed(0)
    seq = FusedSequential(nn.Conv2d(3, 6, 3, stride=3), nn.GELU(), nn.BatchNorm2d(6),
                          nn.Conv2d(6, 6, 1), nn.ReLU(), nn.BatchNorm2d(6)).train(training)
    assert_compiled_block_matches(seq, torch.randn(2, 3, 10, 10), backend="aot_eager")
