"""Checkpoints in the official, timm and mmpretrain formats, written from a random model and
loaded back; architecture checks; key reports; the released-weights cache and its
no-network message (the downloader is replaced, the network never touched)."""

import argparse
import os

import pytest
import torch
from torch import nn

from convmixer_kernels.models import hub
from convmixer_kernels.models.checkpoint import (
    CheckpointError,
    convert_state_dict,
    detect_format,
    infer_architecture,
    load_checkpoint,
)
from convmixer_kernels.models import get_config, get_model
from convmixer_kernels.models import ConvMixer
from convmixer_kernels.reference import Residual

# convmixer_64_4's architecture: dim 64, depth 4, k 5, p 2.
ARCH = dict(dim=64, depth=4, kernel_size=5, patch_size=2, num_classes=10)


def random_model(**overrides) -> ConvMixer:
    model = ConvMixer(**{**ARCH, **overrides})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


class OfficialLayout(nn.Sequential):
    """The official code's model: one flat Sequential."""

    def __init__(self, dim, depth, kernel_size, patch_size, num_classes):
        super().__init__(
            nn.Conv2d(3, dim, patch_size, stride=patch_size), nn.GELU(), nn.BatchNorm2d(dim),
            *[nn.Sequential(
                Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"),
                                       nn.GELU(), nn.BatchNorm2d(dim))),
                nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim)) for _ in range(depth)],
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, num_classes),
        )


class MMPretrainLayout(nn.Module):
    """mmpretrain's ImageClassifier: backbone.stem, backbone.stages, neck (no weights), head.fc."""

    def __init__(self, dim, depth, kernel_size, patch_size, num_classes):
        super().__init__()
        timm_like = ConvMixer(dim, depth, kernel_size, patch_size, num_classes=num_classes, fused=False)
        self.backbone = nn.Module()
        self.backbone.stem, self.backbone.stages = timm_like.stem, timm_like.blocks
        self.head = nn.Module()
        self.head.fc = timm_like.head

    def forward(self, x):
        x = self.backbone.stages(self.backbone.stem(x))
        return self.head.fc(x.mean(dim=(2, 3)))


WRAPPERS = {
    "official": lambda sd: {f"module.{k}": v for k, v in sd.items()},  # saved from DataParallel
    "timm": lambda sd: {"state_dict": sd, "epoch": 300, "arch": "convmixer", "args": argparse.Namespace(lr=0.01)},
    "mmpretrain": lambda sd: {"meta": {"mmcls_version": "0.21"}, "state_dict": sd},
}


@pytest.mark.parametrize("fmt", ["official", "timm", "mmpretrain"])
def test_round_trip_through_every_format(tmp_path, fmt):
    torch.manual_seed(0)
    source = random_model()
    path = tmp_path / f"{fmt}.pth"
    torch.save(WRAPPERS[fmt](convert_state_dict(source.state_dict(), to=fmt)), path)
    model = get_model("convmixer_64_4", pretrained=str(path))
    assert model.pretrained_cfg["source"] == str(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("fmt, layout", [("official", OfficialLayout), ("mmpretrain", MMPretrainLayout)])
def test_converted_keys_fit_the_real_layouts(fmt, layout):
    torch.manual_seed(0)
    source = random_model(fused=False)
    other = layout(**ARCH).eval()
    other.load_state_dict(convert_state_dict(source.state_dict(), to=fmt), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other(x), source(x))
    back = convert_state_dict(other.state_dict(), to="timm")
    assert detect_format(other.state_dict()) == fmt
    assert back.keys() == source.state_dict().keys()


def test_ema_weights_are_preferred(tmp_path):
    torch.manual_seed(0)
    plain, ema = random_model(), random_model()
    path = tmp_path / "train.pth.tar"
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict()}, path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(get_model("convmixer_64_4", pretrained=str(path))(x), ema(x))
        assert torch.equal(get_model("convmixer_64_4", pretrained=str(path), use_ema=False)(x), plain(x))


def test_compiled_model_prefix_and_a_loaded_dict():
    source = random_model()
    state = {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}
    model = get_model("convmixer_64_4", pretrained={"model": state})
    assert model.pretrained_cfg["source"] == "state dict"
    assert torch.equal(model.stem[0].weight, source.stem[0].weight)


def test_infer_architecture():
    arch = infer_architecture(random_model(in_chans=1).state_dict())
    assert (arch.dim, arch.depth, arch.kernel_size, arch.patch_size, arch.in_chans, arch.num_classes) == (64, 4, 5, 2, 1, 10)


def test_wrong_architecture_names_the_differences_and_the_fitting_config(tmp_path):
    path = tmp_path / "k3.pth"
    torch.save(random_model(kernel_size=3, depth=2).state_dict(), path)
    with pytest.raises(CheckpointError, match="depth 2 in the checkpoint, 4 in the model; kernel_size 3 in the checkpoint, 5 in the model"):
        get_model("convmixer_64_4", pretrained=str(path))
    with torch.device("meta"):
        big = ConvMixer(768, 32, 7, 7, activation="relu")
    # The shapes are all the check reads: empty tensors stand in for the weights.
    shapes = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in big.state_dict().items()}
    with pytest.raises(CheckpointError, match="fits the config 'convmixer_768_32'"):
        get_model("convmixer_1536_20", pretrained=shapes)


def test_missing_and_unexpected_keys_are_named():
    state = random_model().state_dict()
    del state["blocks.1.3.weight"]
    state["blocks.1.5.weight"] = torch.zeros(3)
    model = ConvMixer(**ARCH)
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks.1.3.weight'\], unexpected keys \['blocks.1.5.weight'\]"):
        load_checkpoint(model, state)
    with pytest.warns(UserWarning, match="blocks.1.3.weight"):
        result = load_checkpoint(model, state, strict=False)
    assert result.missing_keys == ["blocks.1.3.weight"] and result.unexpected_keys == ["blocks.1.5.weight"]
    assert result.format == "timm"


def test_other_num_classes_keeps_a_fresh_head_and_in_chans_adapts():
    source = random_model()
    with pytest.warns(UserWarning, match="10 classes"):
        model = get_model("convmixer_64_4", pretrained=source.state_dict(), num_classes=3)
    assert model.head.out_features == 3
    assert torch.equal(model.blocks[0][1].weight, source.blocks[0][1].weight)
    grey = get_model("convmixer_64_4", pretrained=source.state_dict(), in_chans=1)
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        # One input channel sums the filters: a grey image looks as it did in RGB.
        torch.testing.assert_close(grey(image), source(image.expand(1, 3, 32, 32)), rtol=1e-4, atol=1e-5)


def test_headless_checkpoint_into_a_headless_model():
    source = random_model()
    backbone_only = {k: v for k, v in convert_state_dict(source.state_dict(), to="mmpretrain").items()
                     if k.startswith("backbone.")}
    model = get_model("convmixer_64_4", pretrained=backbone_only, num_classes=0)
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(model(x), source.forward_head(source.forward_features(x), pre_logits=True))


def test_weights_only_refusal_is_explained(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": random_model().state_dict(), "extra": CheckpointError("x")}, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        get_model("convmixer_64_4", pretrained=str(path))


def test_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    source = random_model()
    path = str(tmp_path / "model.safetensors")
    safetensors.save_file(source.state_dict(), path)
    assert torch.equal(get_model("convmixer_64_4", pretrained=path).head.weight, source.head.weight)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    return os.path.join(str(tmp_path), "checkpoints")


def test_pretrained_without_network_names_the_file(cache, monkeypatch):
    attempts = []

    def offline(url, destination):
        attempts.append(url)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(hub, "_download", offline)
    with pytest.raises(RuntimeError) as info:
        get_model("convmixer_768_32", pretrained=True)
    message = str(info.value)
    assert attempts == list(get_config("convmixer_768_32").urls)
    assert "convmixer_768_32_ks7_p7_relu.pth.tar" in message
    assert cache in message and "pretrained='/path/to/" in message


def test_pretrained_uses_the_cache_then_downloads(cache, monkeypatch):
    config = get_config("convmixer_1536_20")
    cached = os.path.join(cache, config.urls[1].rsplit("/", 1)[-1])
    os.makedirs(cache)
    open(cached, "wb").close()
    monkeypatch.setattr(hub, "_download", lambda url, dst: pytest.fail("downloaded despite the cache"))
    assert hub.fetch_pretrained(config) == cached
    os.remove(cached)
    fetched = []
    monkeypatch.setattr(hub, "_download", lambda url, dst: (fetched.append(url), open(dst, "wb").close()))
    path = hub.fetch_pretrained(config)
    assert fetched == [config.urls[0]] and os.path.isfile(path)


def test_no_released_weights_for_small_configs():
    with pytest.raises(ValueError, match="no released weights"):
        get_model("convmixer_256_8", pretrained=True)
