"""The preprocessing of the released weights, with PIL and numpy (no torchvision).

Resize the short side to 233 (bicubic), center crop 224, scale to [0, 1], subtract the
ImageNet mean and divide by its std: timm's eval transform with crop_pct 0.96. The sizes
and statistics come from a model's config, so the 32x32 configs use theirs.

Images of more than 8 bits are scaled to 8 bits as an image viewer shows them, not
clipped: 16-bit ones (PIL modes I;16*, and I within 0..65535) divide by 257, float ones
(mode F) must lie in [0, 1] and multiply by 255; other float ranges are refused.
An image whose resize would exceed MAX_RESIZED_PIXELS (an extreme aspect ratio: a 1 x
100000 strip asks for 233 x 23,300,000) is refused before PIL allocates it.
"""

import os
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .configs import IMAGENET_MEAN, IMAGENET_STD

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

# The largest resize preprocess does: 2**25 pixels, 100 MB as 8-bit RGB (a 4000 x 3000
# photo resized to 233 is 72,000 pixels; only aspect ratios beyond ~600:1 come near it).
MAX_RESIZED_PIXELS = 1 << 25
_CHANNELS = (1, 3, 4)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _eight_bit_rgb(image: Image.Image) -> Image.Image:
    """RGB of a PIL image; more than 8 bits are scaled down, where convert("RGB") clips."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return Image.fromarray(_scaled_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    return image.convert("RGB")


def _scaled_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F":
        if not (0.0 <= low and high <= 1.0):  # also false for NaN
            raise ValueError(f"a float image (PIL mode F) must have values in [0, 1] to be shown as 8 bits, "
                             f"got [{low}, {high}]; scale it to [0, 1] or convert it to 8 bits first")
        return np.round(values * 255.0).astype(np.uint8)
    if not (0 <= low and high <= 65535):
        raise ValueError(f"a 32-bit integer image (PIL mode {mode}) must have values in [0, 65535] to be read "
                         f"as 16 bits, got [{low:.0f}, {high:.0f}]; convert it to 8 bits first")
    # 65535 / 257 = 255: the full 16-bit range onto the full 8-bit one, as viewers show it.
    return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)


def _check_chw(image: torch.Tensor) -> None:
    """A tensor image must be CHW, and not also readable as HWC (e.g. 4 x 4 x 3)."""
    shape = tuple(image.shape)
    if image.dim() != 3:
        raise ValueError(f"an image tensor must be CHW, got shape {shape} (for several images pass a list)")
    if shape[0] not in _CHANNELS:
        looks_hwc = "; it looks HWC: pass image.permute(2, 0, 1)" if shape[2] in _CHANNELS else ""
        raise ValueError(f"an image tensor must be CHW with 1, 3 or 4 channels, got shape {shape}{looks_hwc}")
    if shape[2] in _CHANNELS:
        raise ValueError(
            f"an image tensor of shape {shape} is ambiguous: CHW ({shape[0]} channels, {shape[1]}x{shape[2]}) "
            f"or HWC ({shape[2]} channels, {shape[0]}x{shape[1]}); pass a PIL image or an HWC uint8 numpy array, "
            "whose layout is fixed"
        )


def to_pil(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, an HWC (or HW) uint8 array, or a CHW
    tensor (uint8 in [0, 255] or float in [0, 1], as torchvision's convention; a shape
    that is also HWC-like, such as 4 x 4 x 3, is refused as ambiguous)."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            return _eight_bit_rgb(img)
    if isinstance(image, Image.Image):
        return _eight_bit_rgb(image)
    if isinstance(image, torch.Tensor):
        _check_chw(image)
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
    ratio, truncated to an integer. A result over MAX_RESIZED_PIXELS is refused."""
    w, h = image.size
    if min(w, h) == size:
        return image
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    if new[0] * new[1] > MAX_RESIZED_PIXELS:
        raise ValueError(
            f"a {w}x{h} image (aspect ratio {max(w, h) / min(w, h):.0f}:1) resized to short side {size} would be "
            f"{new[0]}x{new[1]} = {new[0] * new[1]:,} pixels, over the limit of {MAX_RESIZED_PIXELS:,} "
            "(convmixer_kernels.models.preprocess.MAX_RESIZED_PIXELS); crop the part to classify first"
        )
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

