"""Preprocessing against a hand computation, every accepted image type, inference_model and
the shipped ImageNet class names."""

import numpy as np
import pytest
import torch
from PIL import Image

from convmixer_kernels.models.imagenet_classes import imagenet_classes
from convmixer_kernels.models.inference import inference_model
from convmixer_kernels.models import IMAGENET_MEAN, IMAGENET_STD, get_model
from convmixer_kernels.models.preprocess import center_crop, preprocess, preprocess_args, resize_short_side, to_pil


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_preprocess_by_hand():
    # 5 wide, 7 high: the short side is already 5, so the resize keeps it; the 3x3 center
    # crop starts at column round(2 / 2) = 1 and row round(4 / 2) = 2.
    image = random_image(7, 5)
    got = preprocess(image, input_size=3, resize_size=5)
    crop = image[2:5, 1:4].astype(np.float64) / 255.0
    expected = (crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert got.dtype == torch.float32 and got.shape == (3, 3, 3)
    np.testing.assert_allclose(got.numpy(), expected.transpose(2, 0, 1), rtol=0, atol=1e-6)


def test_resize_is_bicubic_on_the_short_side():
    image = Image.fromarray(random_image(300, 500))
    resized = resize_short_side(image, 233)
    assert resized.size == (int(233 * 500 / 300), 233)
    assert np.array_equal(np.asarray(resized), np.asarray(image.resize((388, 233), Image.BICUBIC)))
    portrait = resize_short_side(Image.fromarray(random_image(500, 300)), 233)
    assert portrait.size == (233, 388)
    assert center_crop(resized, 224).size == (224, 224)
    with pytest.raises(ValueError, match="center-crop"):
        center_crop(Image.fromarray(random_image(10, 10)), 11)


def test_released_preprocessing_end_to_end():
    image = random_image(300, 400)
    expected_pil = Image.fromarray(image).resize((310, 233), Image.BICUBIC)
    left, top = round((310 - 224) / 2), round((233 - 224) / 2)
    crop = np.asarray(expected_pil)[top:top + 224, left:left + 224].astype(np.float32) / 255
    expected = (crop - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    np.testing.assert_allclose(preprocess(image).numpy(), expected.transpose(2, 0, 1), atol=1e-6)


def test_every_image_type_gives_the_same_input(tmp_path):
    array = random_image(40, 30)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    as_tensor = torch.from_numpy(array).permute(2, 0, 1)
    inputs = [str(path), path, Image.fromarray(array), array, as_tensor, as_tensor.float() / 255]
    results = [preprocess(i, input_size=24, resize_size=28) for i in inputs]
    for r in results[1:]:
        assert torch.equal(r, results[0])
    grey = preprocess(array[:, :, 0], input_size=24, resize_size=28)
    assert grey.shape == (3, 24, 24)
    with pytest.raises(TypeError, match="uint8"):
        to_pil(array.astype(np.float32))


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet_classes()
    assert len(names) == len(set(names)) == 1000
    assert (names[0], names[1], names[207], names[281], names[948], names[999]) == (
        "tench", "goldfish", "golden retriever", "tabby", "Granny Smith", "toilet tissue")


def test_inference_model_fields(tmp_path):
    torch.manual_seed(0)
    model = get_model("convmixer_64_4", num_classes=1000)
    image = random_image(48, 40)
    result = inference_model(model, image, topk=5)
    scores = result["pred_scores"]
    assert scores.shape == (1000,) and abs(scores.sum() - 1) < 1e-5
    assert result["pred_label"] == int(scores.argmax())
    assert result["pred_score"] == pytest.approx(float(scores.max()))
    assert result["pred_class"] == imagenet_classes()[result["pred_label"]]
    top = result["topk"]
    assert len(top) == 5 and [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    # The same as preprocessing with the config's sizes and statistics and running the model.
    assert preprocess_args(model)["input_size"] == 32
    with torch.no_grad():
        logits = model(preprocess(image, **preprocess_args(model))[None])
    np.testing.assert_allclose(scores, torch.softmax(logits, 1)[0].numpy(), rtol=1e-5, atol=1e-7)
    batch = inference_model(model, [image, random_image(33, 50, seed=1)], topk=2)
    assert len(batch) == 2 and batch[0]["pred_label"] == result["pred_label"] and len(batch[1]["topk"]) == 2


def test_inference_model_by_name_with_a_checkpoint_and_class_names(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ckpt.pth"
    torch.save(get_model("convmixer_64_4", num_classes=3).state_dict(), path)
    result = inference_model("convmixer_64_4", random_image(32, 32), pretrained=str(path),
                             num_classes=3, classes=["cat", "dog", "bird"])
    assert result["pred_class"] in {"cat", "dog", "bird"} and len(result["topk"]) == 3
    unnamed = inference_model(get_model("convmixer_64_4"), random_image(32, 32))
    assert unnamed["pred_class"] == str(unnamed["pred_label"])


@pytest.mark.parametrize("topk", [0, -1, 2.5, True])
def test_inference_model_refuses_a_topk_that_is_not_positive(topk):
    with pytest.raises(ValueError, match=rf"topk must be a positive integer, got {topk!r}"):
        inference_model(get_model("convmixer_64_4"), random_image(32, 32), topk=topk)


def test_inference_model_refuses_an_empty_list_and_a_wrong_class_list():
    model = get_model("convmixer_64_4")
    with pytest.raises(ValueError, match="image is an empty list; pass at least one image"):
        inference_model(model, [])
    with pytest.raises(ValueError, match="classes has 3 names but the model has 10 outputs; give one name per output"):
        inference_model(model, random_image(32, 32), classes=["cat", "dog", "bird"])
    model.class_names = ["x"] * 11
    with pytest.raises(ValueError, match="the model's class_names has 11 names but the model has 10 outputs"):
        inference_model(model, random_image(32, 32))


def test_inference_model_gives_back_each_module_its_mode():
    model = get_model("convmixer_64_4").train()
    model.blocks[0][3].eval()  # a frozen BatchNorm inside a training model
    before = [m.training for m in model.modules()]
    stats = model.blocks[1][3].running_mean.clone()
    inference_model(model, random_image(32, 32))
    assert [m.training for m in model.modules()] == before and model.training
    assert torch.equal(model.blocks[1][3].running_mean, stats)  # it ran in eval: no statistics update
