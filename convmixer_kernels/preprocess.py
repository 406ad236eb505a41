"""The preprocessing of the released weights, with PIL and numpy (no torchvision).

Resize the short side to 233 (bicubic), center crop 224, scale to [0, 1], subtract the
ImageNet mean and divide by its std: timm's eval transform with crop_pct 0.96. The sizes
and statistics come from a model's config, so the 32x32 configs use theirs.
"""

import os
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .models import IMAGENET_MEAN, IMAGENET_STD

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


def to_pil(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, an HWC (or HW) uint8 array, or a CHW
    tensor (uint8 in [0, 255] or float in [0, 1], as torchvision's convention)."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            return img.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() != 3:
            raise ValueError(f"an image tensor must be CHW, got shape {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.permute(1, 2, 0).cpu().numpy()
        if image.shape[2] == 1:
            image = image[:, :, 0]
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"an image array must be uint8 (HWC, 0-255), got {image.dtype}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"an image array must be HW or HWC with 1, 3 or 4 channels, got {image.shape}")
        return Image.fromarray(image.squeeze(2) if image.ndim == 3 and image.shape[2] == 1 else image).convert("RGB")
    raise TypeError(f"expected an image path, PIL image, uint8 array or tensor, got {type(image).__name__}")


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so that the short side is `size`; the long side keeps the aspect
    ratio, truncated to an integer."""
    w, h = image.size
    if min(w, h) == size:
        return image
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return image.resize(new, Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"cannot center-crop {size}x{size} from a {w}x{h} image")
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess(
    image: ImageLike,
    input_size: int = 224,
    resize_size: int = 233,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """One image as the model's float32 (3, input_size, input_size) input."""
    img = center_crop(resize_short_side(to_pil(image), resize_size), input_size)
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def preprocess_args(model) -> dict:
    """preprocess's keyword arguments for a model: its config's, or the ImageNet ones."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {
        "input_size": cfg.get("input_size", 224),
        "resize_size": cfg.get("resize_size", 233),
        "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
        "std": tuple(cfg.get("std", IMAGENET_STD)),
    }

