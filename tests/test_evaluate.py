"""python -m convmixer_kernels.evaluate over a small ImageFolder the test writes."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convmixer_kernels.evaluate import main
from convmixer_kernels.imagefolder import ImageFolder
from convmixer_kernels.models import get_model
from convmixer_kernels.preprocess import preprocess, preprocess_args

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
        [sys.executable, "-m", "convmixer_kernels.evaluate", "--model", "convmixer_64_4",
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
