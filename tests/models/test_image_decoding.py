"""Images that an 8-bit convert("RGB") would decode wrong, generated here: 16-bit PNGs
and float TIFFs are scaled to 8 bits as a viewer shows them (or refused); an extreme
aspect ratio is refused before its huge resize; tensors must be unambiguously CHW."""

import numpy as np
import pytest
import torch
from PIL import Image

from convmixer_kernels.models.preprocess import MAX_RESIZED_PIXELS, preprocess, resize_short_side, to_pil


def gradient(dtype, top) -> np.ndarray:
    """A 16 x 256 horizontal ramp from 0 to `top`: its mean is top / 2."""
    return np.tile(np.linspace(0, top, 256), (16, 1)).round(6).astype(dtype)


def mean_of(image) -> float:
    return float(np.asarray(to_pil(image), dtype=np.float64).mean() / 255)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "ramp16.png"
    Image.fromarray(gradient(np.uint16, 65535)).save(path)
    assert Image.open(path).mode == "I;16"
    assert mean_of(path) == pytest.approx(0.5, abs=1e-3)  # convert("RGB") alone gives 0.996
    # Each 16-bit value v shows as round(v / 257): 65535 -> 255, 32896 -> 128.
    pixels = np.asarray(to_pil(Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16))))
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255] and pixels.shape == (1, 4, 3)


def test_float_tiff_in_0_1_is_scaled_and_other_ranges_refused(tmp_path):
    path = tmp_path / "ramp.tif"
    Image.fromarray(gradient(np.float32, 1.0)).save(path)
    assert Image.open(path).mode == "F"
    assert mean_of(path) == pytest.approx(0.5, abs=1e-3)  # convert("RGB") alone gives 0.0
    wide = tmp_path / "wide.tif"
    Image.fromarray(gradient(np.float32, 200.0)).save(wide)
    with pytest.raises(ValueError, match=r"float image \(PIL mode F\) must have values in \[0, 1\].*got \[0.0, 200.0\]"):
        to_pil(wide)
    nan = gradient(np.float32, 1.0)
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="must have values in \\[0, 1\\]"):
        to_pil(Image.fromarray(nan))


def test_32_bit_integer_image_within_16_bits_is_scaled_beyond_refused():
    assert mean_of(Image.fromarray(gradient(np.int32, 65535), mode="I")) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match=r"mode I\) must have values in \[0, 65535\].*got \[0, 70000\]"):
        to_pil(Image.fromarray(gradient(np.int32, 70000), mode="I"))


@pytest.mark.parametrize("width", [20_000, 100_000])
def test_extreme_aspect_ratio_is_refused_before_the_resize(width):
    strip = Image.new("RGB", (width, 1))
    with pytest.raises(ValueError) as info:
        preprocess(strip)
    message = str(info.value)
    assert f"a {width}x1 image (aspect ratio {width}:1) resized to short side 233 would be {233 * width}x233" in message
    assert f"over the limit of {MAX_RESIZED_PIXELS:,}" in message and "crop the part to classify first" in message


def test_the_limit_leaves_ordinary_and_long_images_alone():
    assert resize_short_side(Image.new("RGB", (4000, 3000)), 233).size == (310, 233)
    assert resize_short_side(Image.new("RGB", (10, 1000)), 233).size == (233, 23300)


def test_hwc_tensor_is_named_and_ambiguous_shapes_refused():
    with pytest.raises(ValueError, match=r"CHW with 1, 3 or 4 channels, got shape \(40, 48, 3\); it looks HWC: "
                                         r"pass image.permute\(2, 0, 1\)"):
        to_pil(torch.zeros(40, 48, 3, dtype=torch.uint8))
    # 4 x 4 x 3 used to be read silently as a 4-channel 4 x 3 image.
    with pytest.raises(ValueError, match=r"shape \(4, 4, 3\) is ambiguous: CHW \(4 channels, 4x3\) or HWC "
                                         r"\(3 channels, 4x4\)"):
        to_pil(torch.zeros(4, 4, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"must be CHW, got shape \(2, 3, 8, 8\) \(for several images pass a list\)"):
        to_pil(torch.zeros(2, 3, 8, 8))
    # The same 4 x 4 x 3 pixels as a numpy array are HWC by convention, with no ambiguity.
    assert to_pil(np.zeros((4, 4, 3), dtype=np.uint8)).size == (4, 4)
    assert to_pil(torch.zeros(3, 4, 5)).size == (5, 4)
