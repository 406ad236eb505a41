"""python -m convmixer_kernels.cli.evaluate over a small ImageFolder the test writes."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convmixer_kernels.cli.evaluate import evaluate, main, make_loader
from convmixer_kernels.models.imagefolder import ImageFolder
from convmixer_kernels.models.imagenet_classes import imagenet_classes
from convmixer_kernels.models import get_model
from convmixer_kernels.models.preprocess import preprocess, preprocess_args

CLASSES = ("ant", "bee", "cat", "dog", "eel", "fox")


@pytest.fixture
def folder(tmp_path):
    """6 classes x 3 images of assorted sizes and formats, and a 6-class checkpoint."""
    rng = np.random.default_rng(0)
    data = tmp_path / "val"
    for c in CLASSES:
        (data / c).mkdir(parents=True)
        for i, (h, w) in enumerate([(36, 40), (50, 34), (32, 32)]):
            image = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
            image.save(data / c / f"{i}.{'png' if i else 'jpg'}")
    (data / "ant" / "notes.txt").write_text("not an image")
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pth"
    torch.save(get_model("convmixer_64_4", num_classes=len(CLASSES)).state_dict(), checkpoint)
    return data, checkpoint


def expected_accuracy(data, checkpoint):
    model = get_model("convmixer_64_4", pretrained=str(checkpoint), num_classes=len(CLASSES))
    dataset = ImageFolder(str(data), lambda p: preprocess(p, **preprocess_args(model)))
    assert dataset.classes == list(CLASSES) and len(dataset) == 18
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([label for _, label in dataset.samples])
    with torch.no_grad():
        top5 = model(images).topk(5, dim=1).indices
    return 100 * (top5[:, 0] == labels).float().mean().item(), 100 * (top5 == labels[:, None]).any(1).float().mean().item()


def test_evaluate_matches_a_direct_computation(folder, capsys):
    data, checkpoint = folder
    result = main(["--model", "convmixer_64_4", "--checkpoint", str(checkpoint), "--data", str(data),
                   "--num-classes", "6", "--batch-size", "4", "--workers", "0"])
    top1, top5 = expected_accuracy(data, checkpoint)
    assert result.images == 18
    assert result.top1 == pytest.approx(top1) and result.top5 == pytest.approx(top5)
    captured = capsys.readouterr()
    assert re.search(r"convmixer_64_4: top-1 \d+\.\d\d%  top-5 \d+\.\d\d%  over 18 images", captured.out)
    assert "evaluate" in captured.err  # the tqdm progress bar


def test_evaluate_cli_with_workers_channels_last_and_amp(folder):
    data, checkpoint = folder
    run = subprocess.run(
        [sys.executable, "-m", "convmixer_kernels.cli.evaluate", "--model", "convmixer_64_4",
         "--checkpoint", str(checkpoint), "--data", str(data), "--num-classes", "6",
         "--batch-size", "8", "--workers", "2", "--channels-last", "--amp", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    match = re.search(r"top-1 (\d+\.\d\d)%  top-5 (\d+\.\d\d)%  over 18 images", run.stdout)
    assert match, run.stdout
    top1, top5 = expected_accuracy(data, checkpoint)
    # bfloat16 autocast may flip a near tie; most predictions stay.
    assert abs(float(match.group(1)) - top1) <= 100 * 3 / 18


def test_more_folders_than_classes_is_an_error(folder):
    data, checkpoint = folder
    torch.save(get_model("convmixer_64_4", num_classes=4).state_dict(), checkpoint)
    with pytest.raises(ValueError, match="6 class folders but the model has 4 outputs"):
        main(["--model", "convmixer_64_4", "--checkpoint", str(checkpoint), "--data", str(data),
              "--num-classes", "4", "--workers", "0"])


def add_broken_images(data):
    """A truncated PNG and a text file named .jpg beside the good images."""
    good = (data / "bee" / "1.png").read_bytes()
    (data / "bee" / "cut.png").write_bytes(good[: len(good) // 2])
    (data / "cat" / "text.jpg").write_text("not a jpeg")
    return [str(data / "bee" / "cut.png"), str(data / "cat" / "text.jpg")]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_broken_image_stops_the_run_naming_the_file(folder, workers):
    data, checkpoint = folder
    broken = add_broken_images(data)
    with pytest.raises(ValueError) as info:
        main(["--model", "convmixer_64_4", "--checkpoint", str(checkpoint), "--data", str(data),
              "--num-classes", "6", "--workers", workers, "--no-progress"])
    message = str(info.value)
    assert f"cannot read the image {broken[0]}" in message and "--skip-broken" in message


@pytest.mark.parametrize("workers", ["0", "2"])
def test_skip_broken_counts_and_lists_them_and_scores_the_rest(folder, capsys, workers):
    data, checkpoint = folder
    broken = add_broken_images(data)
    result = main(["--model", "convmixer_64_4", "--checkpoint", str(checkpoint), "--data", str(data),
                   "--num-classes", "6", "--batch-size", "4", "--workers", workers, "--skip-broken", "--no-progress"])
    for path in broken:
        os.remove(path)
    top1, top5 = expected_accuracy(data, checkpoint)  # over the 18 good images only
    assert result.images == 18 and result.top1 == pytest.approx(top1) and result.top5 == pytest.approx(top5)
    assert [b.split(":")[0] for b in result.broken] == broken
    out = capsys.readouterr().out
    assert "skipped 2 broken images:" in out and all(path in out for path in broken)


def synset_folder(tmp_path, synsets):
    rng = np.random.default_rng(1)
    data = tmp_path / "synsets"
    for synset in synsets:
        (data / synset).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(data / synset / "0.png")
    return data


def test_a_subset_of_synset_folders_maps_to_the_imagenet_indices(tmp_path):
    # The first, a middle and the last ImageNet synsets: by folder order they would be
    # labelled 0, 1, 2, but they are outputs 0, 1 and 999. The synset list is timm's
    # (scripts/install.sh installs timm's files without its dependencies).
    from convmixer_kernels.models.imagenet_classes import imagenet_synsets

    if imagenet_synsets() is None:
        pytest.skip("timm is not installed: no synset list (pip install --no-deps timm)")
    data = synset_folder(tmp_path, ["n01440764", "n01443537", "n15075141"])
    loader = make_loader(get_model("convmixer_64_4", num_classes=1000), str(data), workers=0)
    assert sorted(label for _, label in loader.dataset.samples) == [0, 1, 999]
    not_imagenet = synset_folder(tmp_path / "other", ["n01440764", "n99999999"])
    with pytest.raises(ValueError, match=r"1 class folders of .* are not ImageNet-1k synsets: \['n99999999'\]"):
        make_loader(get_model("convmixer_64_4", num_classes=1000), str(not_imagenet), workers=0)


def test_a_subset_of_synset_folders_needs_a_class_map_without_a_synset_list(tmp_path, monkeypatch):
    import convmixer_kernels.cli.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "imagenet_synsets", lambda: None)
    data = synset_folder(tmp_path, ["n01440764", "n15075141"])
    model = get_model("convmixer_64_4", num_classes=1000)
    with pytest.raises(ValueError) as info:
        make_loader(model, str(data), workers=0)
    message = str(info.value)
    assert f"{data} has 2 class folders for a model with 1000 outputs" in message
    assert "Pass --class-map FILE" in message and "LOC_synset_mapping.txt" in message and "install timm" in message

    # A class map in the devkit's format: "synset name, name" a line, in output order.
    lines = [f"n{i:08d} class {i}" for i in range(1000)]
    lines[0], lines[999] = "n01440764 tench, Tinca tinca", "n15075141 toilet tissue, toilet paper"
    class_map = tmp_path / "LOC_synset_mapping.txt"
    class_map.write_text("\n".join(lines) + "\n")
    loader = make_loader(model, str(data), workers=0, class_map=str(class_map))
    assert [label for _, label in loader.dataset.samples] == [0, 999]


def test_class_map_errors(tmp_path):
    data = synset_folder(tmp_path, ["n01440764", "n15075141"])
    model = get_model("convmixer_64_4", num_classes=1000)
    short = tmp_path / "short.txt"
    short.write_text("n01440764\nn01443537\n")
    with pytest.raises(ValueError, match=r"1 class folders of .* are not in the class map .*short.txt: \['n15075141'\]"):
        make_loader(model, str(data), workers=0, class_map=str(short))
    twice = tmp_path / "twice.txt"
    twice.write_text("n01440764\nn01440764\n")
    with pytest.raises(ValueError, match=r"names a folder more than once: \['n01440764'\]"):
        make_loader(model, str(data), workers=0, class_map=str(twice))
    with pytest.raises(ValueError, match=r"class map .*short.txt has 2 classes but the model has 1 outputs"):
        make_loader(get_model("convmixer_64_4", num_classes=1), str(data), workers=0, class_map=str(short))


def test_folders_named_after_the_classes_map_by_name(tmp_path):
    # ImageNet class names as folder names: a subset is matched by name, not by order.
    names = imagenet_classes()
    data = synset_folder(tmp_path, [names[5], names[900]])
    loader = make_loader(get_model("convmixer_64_4", num_classes=1000), str(data), workers=0)
    assert sorted(label for _, label in loader.dataset.samples) == [5, 900]


def test_a_subset_of_other_folders_is_an_error(folder):
    data, checkpoint = folder
    with pytest.raises(ValueError, match=r"has 6 class folders for a model with 10 outputs, and the folder names "
                                         r"\(ant, bee, cat, dog, eel, \.\.\.\) are not the model's class names"):
        make_loader(get_model("convmixer_64_4"), str(data), workers=0)


def test_skip_broken_with_every_image_broken_is_an_error(tmp_path):
    (tmp_path / "val" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a" / "x.png").write_bytes(b"\x89PNG cut")
    model = get_model("convmixer_64_4", num_classes=1)
    with pytest.raises(ValueError, match=r"none of the 1 images could be read; the first: .*x.png: UnidentifiedImageError"):
        evaluate(model, make_loader(model, str(tmp_path / "val"), workers=0, skip_broken=True), progress=False)
