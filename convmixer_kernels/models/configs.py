"""The named ConvMixer configurations: architecture, preprocessing, released weights.
A leaf module: the rest of the model layer imports it, it imports none of them."""

import dataclasses
import fnmatch
from typing import Dict, List, Optional, Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One named architecture and how its weights expect their inputs."""

    name: str
    dim: int
    depth: int
    kernel_size: int
    patch_size: int
    activation: str = "gelu"
    num_classes: int = 1000
    input_size: int = 224
    # Short side before the center crop: 233 = floor(224 / 0.96), the released weights' crop.
    resize_size: int = 233
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    # Download locations of released weights, tried in order; empty for unreleased configs.
    urls: Tuple[str, ...] = ()
    top1: Optional[float] = None  # ImageNet-1k top-1 (%) published for the released weights
    aliases: Tuple[str, ...] = ()

    @property
    def params(self) -> int:
        """h[d(k^2 + h + 6) + 3p^2 + n + 3] + n, the count docs/design.md tabulates (3 input channels)."""
        h, d, k, p, n = self.dim, self.depth, self.kernel_size, self.patch_size, self.num_classes
        return h * (d * (k * k + h + 6) + 3 * p * p + n + 3) + n

    def model_kwargs(self) -> Dict:
        return dict(
            dim=self.dim,
            depth=self.depth,
            kernel_size=self.kernel_size,
            patch_size=self.patch_size,
            num_classes=self.num_classes,
            activation=self.activation,
        )


_RELEASE = "https://github.com/tmp-iclr/convmixer/releases/download/timm-v1.0/"
_OPENMMLAB = "https://download.openmmlab.com/mmclassification/v0/convmixer/"

CONFIGS: Dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig(
            "convmixer_768_32", 768, 32, 7, 7,
            activation="relu",  # the released weights were trained with ReLU
            urls=(
                _RELEASE + "convmixer_768_32_ks7_p7_relu.pth.tar",
                _OPENMMLAB + "convmixer-768-32_3rdparty_10xb64_in1k_20220323-bca1f7b8.pth",
            ),
            top1=80.16,
            aliases=("convmixer-768-32_3rdparty_in1k", "convmixer-768-32_10xb64_in1k"),
        ),
        ModelConfig(
            "convmixer_1024_20_ks9_p14", 1024, 20, 9, 14,
            urls=(
                _RELEASE + "convmixer_1024_20_ks9_p14.pth.tar",
                _OPENMMLAB + "convmixer-1024-20_3rdparty_10xb64_in1k_20220323-48f8aeba.pth",
            ),
            top1=76.94,
            aliases=("convmixer-1024-20_3rdparty_in1k", "convmixer-1024-20_10xb64_in1k"),
        ),
        ModelConfig(
            "convmixer_1536_20", 1536, 20, 9, 7,
            urls=(
                _RELEASE + "convmixer_1536_20_ks9_p7.pth.tar",
                _OPENMMLAB + "convmixer-1536_20_3rdparty_10xb64_in1k_20220323-ea5786f3.pth",
            ),
            top1=81.37,
            aliases=("convmixer-1536-20_3rdparty_in1k", "convmixer-1536-20_10xb64_in1k"),
        ),
        ModelConfig(
            "convmixer_256_8", 256, 8, 5, 2,
            num_classes=10, input_size=32, resize_size=32,
            mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        ),  # the paper's CIFAR-10 setting, 32x32 inputs; no released weights
        ModelConfig(
            "convmixer_64_4", 64, 4, 5, 2,
            num_classes=10, input_size=32, resize_size=32,
            mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        ),  # a small model for smoke tests and examples, 32x32 inputs; no released weights
    )
}

_ALIASES = {alias: c.name for c in CONFIGS.values() for alias in c.aliases}


def resolve_name(name: str) -> str:
    """The canonical config name for a name, an mmpretrain alias, or a timm name with its
    pretrained tag ("convmixer_768_32.in1k")."""
    base = name.split(".", 1)[0] if "." in name and name.split(".", 1)[0] in CONFIGS else name
    if base in CONFIGS:
        return base
    if name in _ALIASES:
        return _ALIASES[name]
    raise ValueError(f"unknown ConvMixer model {name!r}; known: {', '.join(list_models())} "
                     f"(and the mmpretrain names {', '.join(sorted(_ALIASES))})")


def get_config(name: str) -> ModelConfig:
    return CONFIGS[resolve_name(name)]


def list_models(pattern: str = "*", pretrained: bool = False) -> List[str]:
    """Config names matching a shell-style pattern; pretrained=True keeps those with
    released weights (as timm.list_models does)."""
    return sorted(
        name for name, config in CONFIGS.items()
        if fnmatch.fnmatch(name, pattern) and (config.urls or not pretrained)
    )
