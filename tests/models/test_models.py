"""Named configs, get_model / create_model and the timm + mmpretrain model API of ConvMixer."""

import pytest
import torch
import torch.nn.functional as F

from convmixer_kernels.models import CONFIGS, ConvMixer, create_model, get_config, get_model, list_models
from convmixer_kernels.modules import FusedMixerBlock

# docs/design.md's table: h[d(k^2 + h + 6) + 3p^2 + n + 3] + n.
PUBLISHED_PARAMS = {
    "convmixer_768_32": 21_110_248,
    "convmixer_1024_20_ks9_p14": 24_383_464,
    "convmixer_1536_20": 51_625_960,
}


def meta_model(name: str) -> ConvMixer:
    """The named architecture on the meta device: shapes and parameter counts, no memory."""
    with torch.device("meta"):
        return ConvMixer(**{**get_config(name).model_kwargs(), "fused": False})


def tiny(**kwargs) -> ConvMixer:
    args = dict(dim=16, depth=3, kernel_size=3, patch_size=2, num_classes=5)
    return ConvMixer(**{**args, **kwargs})


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def test_list_models_and_filters():
    names = list_models()
    assert set(PUBLISHED_PARAMS) <= set(names)
    assert "convmixer_256_8" in names
    assert list_models(pretrained=True) == sorted(PUBLISHED_PARAMS)
    assert list_models("convmixer_1*") == ["convmixer_1024_20_ks9_p14", "convmixer_1536_20"]


@pytest.mark.parametrize("alias, name", [
    ("convmixer-768-32_3rdparty_in1k", "convmixer_768_32"),
    ("convmixer-1024-20_3rdparty_in1k", "convmixer_1024_20_ks9_p14"),
    ("convmixer-1536-20_3rdparty_in1k", "convmixer_1536_20"),
    ("convmixer_768_32.in1k", "convmixer_768_32"),
    ("convmixer_1536_20", "convmixer_1536_20"),
])
def test_aliases(alias, name):
    assert get_config(alias).name == name


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="convmixer_768_32"):
        get_config("convmixer_999")


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_parameter_counts(name):
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name] == CONFIGS[name].params


def test_published_architectures():
    m768, m1024, m1536 = (meta_model(n) for n in ("convmixer_768_32", "convmixer_1024_20_ks9_p14", "convmixer_1536_20"))
    assert (m768.kernel_size, m768.patch_size, m768.activation) == (7, 7, "relu")
    assert isinstance(m768.stem[1], torch.nn.ReLU)
    assert (m1024.kernel_size, m1024.patch_size, m1024.activation) == (9, 14, "gelu")
    assert (m1536.kernel_size, m1536.patch_size, m1536.depth) == (9, 7, 20)


def test_small_config_runs_on_32x32():
    model = get_model("convmixer_64_4")
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64, 16, 16)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert not model.training


def test_fused_and_eager_share_keys_and_outputs():
    torch.manual_seed(0)
    fused = randomize_bn(get_model("convmixer_64_4", fused=True))
    eager = get_model("convmixer_64_4", fused=False)
    assert list(fused.state_dict()) == list(eager.state_dict())
    eager.load_state_dict(fused.state_dict())
    assert sum(isinstance(m, FusedMixerBlock) for m in fused.modules()) == 4
    assert not any(isinstance(m, FusedMixerBlock) for m in eager.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fused(x), eager(x), rtol=1e-5, atol=1e-5)


def test_timm_state_dict_keys():
    keys = set(tiny(depth=1).state_dict())
    expected = {"stem.0.weight", "stem.0.bias", "head.weight", "head.bias"}
    expected |= {f"stem.2.{b}" for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for part in ("blocks.0.0.fn.2", "blocks.0.3"):
        expected |= {f"{part}.{b}" for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    expected |= {f"{part}.{b}" for part in ("blocks.0.0.fn.0", "blocks.0.1") for b in ("weight", "bias")}
    assert keys == expected


def test_overrides_and_create_model():
    model = create_model("convmixer_64_4", num_classes=3, in_chans=1, out_indices=(0, -1), drop_rate=0.1)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    assert model.out_indices == (0, 3)
    assert model.pretrained_cfg["num_classes"] == 3


def test_extract_feat_stages():
    model = randomize_bn(tiny(out_indices=(-1, 0, 1))).eval()
    x = torch.randn(2, 3, 16, 16)
    maps = model.extract_feat(x, stage="backbone")
    assert isinstance(maps, tuple) and len(maps) == 3
    assert all(m.shape == (2, 16, 8, 8) for m in maps)
    torch.testing.assert_close(maps[-1], model.forward_features(x))
    neck = model.extract_feat(x)  # mmpretrain's default stage
    assert len(neck) == 3 and all(n.shape == (2, 16) for n in neck)
    torch.testing.assert_close(neck[0], maps[0].mean(dim=(2, 3)))
    pre = model.extract_feat(x, stage="pre_logits")
    torch.testing.assert_close(pre, model.forward_head(model.forward_features(x), pre_logits=True))
    torch.testing.assert_close(model.head(pre), model(x))
    with pytest.raises(ValueError, match="stage"):
        model.extract_feat(x, stage="head")


def test_extract_feat_stops_after_the_last_out_index():
    model = tiny(out_indices=0).eval()
    ran = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    model.extract_feat(torch.randn(1, 3, 8, 8), stage="backbone")
    assert ran == [0]


@pytest.mark.parametrize("bad", [3, -4, (0, 5)])
def test_out_indices_out_of_range(bad):
    with pytest.raises(ValueError, match="out_indices"):
        tiny(out_indices=bad)


def test_frozen_stages_stay_frozen_through_train():
    torch.manual_seed(0)
    model = tiny(frozen_stages=2).train()
    frozen = [model.stem, model.blocks[0], model.blocks[1]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.blocks[2].parameters())
    assert all(not m.training for f in frozen for m in f.modules())
    assert model.blocks[2].training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    after = model.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith(("blocks.2", "head")), key
    with pytest.raises(ValueError, match="frozen_stages"):
        tiny(frozen_stages=4)


@pytest.mark.parametrize("fused", [True, False])
def test_gradient_checkpointing_matches(fused):
    torch.manual_seed(0)
    plain = randomize_bn(tiny(fused=fused)).train()
    ckpt = tiny(fused=fused).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for model in (plain, ckpt):
        F.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    # Buffers, num_batches_tracked included: one update per step despite the recompute.
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


def test_reset_classifier_and_get_classifier():
    model = tiny()
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.num_classes == 7
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 7)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 16)
    with pytest.raises(ValueError, match="avg"):
        model.reset_classifier(3, global_pool="max")
