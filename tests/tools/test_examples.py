"""Each example in examples/ runs as a user would run it, in a fresh process."""

import os
import re
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from convmixer_kernels.models import get_model
from tests.harness import ROOT



def run_example(script: str, *args: str, timeout: int = 300) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                         capture_output=True, text=True, timeout=timeout, env=env)
    assert run.returncode == 0, f"{script} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout


def test_predict(tmp_path):
    image = tmp_path / "image.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(image)
    checkpoint = tmp_path / "weights.pth"
    torch.save({"state_dict": get_model("convmixer_64_4", num_classes=1000).state_dict()}, checkpoint)
    out = run_example("predict.py", str(image), "--model", "convmixer_64_4", "--checkpoint", str(checkpoint),
                      "--num-classes", "1000")
    ranks = re.findall(r"^ ?(\d)\. .+\(class +\d+\)  0\.\d{4}$", out, flags=re.M)
    assert ranks == ["1", "2", "3", "4", "5"], out


def test_swap_in_existing_model():
    out = run_example("swap_in_existing_model.py", "--dim", "32", "--depth", "2", "--image-size", "56",
                      "--batch", "2", "--repeats", "2")
    assert "swapped 2 mixer blocks; state_dict keys unchanged" in out
    assert re.search(r"speed-up \d+\.\d\dx", out), out


def test_train_digits(tmp_path):
    plot = tmp_path / "curves.png"
    out = run_example("train_digits.py", "--plot", str(plot), timeout=600)
    assert "losses agree step by step within 1e-5 * (1 + step): True" in out, out
    fused = float(re.search(r"test accuracy: fused (\d+\.\d\d)%", out).group(1))
    assert fused >= 95.0, out
    assert len(re.findall(r"^ +\d+ +\d+\.\d{5} +\d+\.\d{5}", out, flags=re.M)) == 6  # both curves, per epoch
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_train_ddp(tmp_path):
    # torchrun --standalone: a rendezvous on the loopback interface, two processes (gloo).
    checkpoint = tmp_path / "ddp.pth"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(ROOT, "examples", "train_ddp.py"), "--max-steps", "3", "--checkpoint", str(checkpoint)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, f"train_ddp.py failed:\n{run.stdout}\n{run.stderr}"
    assert re.search(r"^steps: 3; test accuracy: \d+\.\d\d%$", run.stdout, flags=re.M), run.stdout
    assert "get_model loads it back to the same predictions: True" in run.stdout, run.stdout
    assert "train (2 processes)" in run.stderr  # rank 0's tqdm bar
    model = get_model("convmixer_64_4", pretrained=str(checkpoint), in_chans=1, num_classes=10)
    assert model.num_classes == 10
