"""get_model / create_model: a ConvMixer from a named configuration (configs.py), with
its weights if asked.

    model = get_model("convmixer_768_32", pretrained=True)          # the released weights
    model = get_model("convmixer-768-32_3rdparty_in1k", pretrained="ckpt.pth")   # mmpretrain name
    model = create_model("convmixer_1536_20.in1k", num_classes=10)  # timm name, new head

pretrained is False, True (the published weights: downloaded once into torch's hub cache),
a local file in the official, timm or mmpretrain format, or a state dict already loaded.
"""

import dataclasses
from typing import Optional

from . import checkpoint as ckpt
from . import hub
from .configs import get_config
from .convmixer import ConvMixer

def get_model(
    name: str,
    pretrained=False,
    fused: bool = True,
    backend: str = "auto",
    *,
    device=None,
    checkpoint_path: Optional[str] = None,
    use_ema: bool = True,
    **overrides,
) -> ConvMixer:
    """A ConvMixer built from a named config, with weights if asked.

    pretrained: False; True for the released weights; a checkpoint path; or a state dict.
    checkpoint_path: timm's spelling of pretrained=path.
    overrides: any ConvMixer argument (num_classes, in_chans, activation, out_indices,
    frozen_stages, drop_rate, ...). With weights, a different num_classes keeps a fresh
    classifier and a different in_chans adapts the patch conv, as timm does; dim, depth,
    kernel and patch size must match the checkpoint.
    The model is returned in eval mode, as mmpretrain's get_model and timm's create_model
    with weights leave it."""
    config = get_config(name)
    if checkpoint_path is not None:
        if pretrained not in (False, None):
            raise ValueError("get_model: pass either pretrained or checkpoint_path, not both")
        pretrained = checkpoint_path
    kwargs = {**config.model_kwargs(), "fused": fused, "backend": backend, **overrides}
    model = ConvMixer(**kwargs)
    model.pretrained_cfg = dict(
        dataclasses.asdict(config),
        num_classes=model.num_classes,
        source=None,
    )
    if pretrained is True:
        pretrained = hub.fetch_pretrained(config)
    if pretrained is not False and pretrained is not None:
        ckpt.load_checkpoint(model, pretrained, use_ema=use_ema, reset_head=None, config_name=config.name)
        model.pretrained_cfg["source"] = pretrained if isinstance(pretrained, str) else "state dict"
    if device is not None:
        model.to(device)
    return model.eval()


def create_model(model_name: str, pretrained=False, **kwargs) -> ConvMixer:
    """timm's spelling of get_model."""
    return get_model(model_name, pretrained=pretrained, **kwargs)
