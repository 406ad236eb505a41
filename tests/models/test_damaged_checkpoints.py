"""Damaged checkpoint files of every kind a failed download or copy leaves behind, written
here: each is reported as damaged (with its size), never with the advice to turn off
weights-only loading, which only a file that really holds refused Python objects gets."""

import argparse
import json
import os
import random
import struct

import pytest
import torch

from convmixer_kernels.models.checkpoint import CheckpointError, read_checkpoint
from convmixer_kernels.models import get_config, get_model


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "good.pth"
    torch.save(get_model("convmixer_64_4").state_dict(), path)
    return path.read_bytes()


def _safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(8)


DAMAGE = {
    "half": lambda good: good[: len(good) // 2],
    "ten_bytes": lambda good: good[:10],
    "empty": lambda good: b"",
    # Seeded, so that the bytes never happen to start with a pickle GLOBAL opcode.
    "random": lambda good: random.Random(0).randbytes(5000),
    "html": lambda good: b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n",
    "safetensors_named_pth": lambda good: _safetensors_bytes(),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_file_is_called_damaged_with_its_size(tmp_path, good_bytes, kind):
    data = DAMAGE[kind](good_bytes)
    path = tmp_path / f"{kind}.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        get_model("convmixer_64_4", pretrained=str(path))
    message = str(info.value)
    assert f"{path} ({len(data):,} bytes) is damaged or not a checkpoint" in message
    assert "fetch the file again" in message
    # A damaged file must never steer the user to an unsafe load.
    assert "weights_only" not in message and "trust" not in message


def test_damaged_file_says_what_it_looks_like(tmp_path):
    html, st = tmp_path / "page.pth", tmp_path / "st.pth"
    html.write_bytes(DAMAGE["html"](b""))
    st.write_bytes(_safetensors_bytes())
    with pytest.raises(CheckpointError, match="HTML or XML page: a failed or redirected download"):
        read_checkpoint(str(html))
    with pytest.raises(CheckpointError, match=r"safetensors file: name it \*\.safetensors"):
        read_checkpoint(str(st))


def test_truncated_file_in_the_hub_cache_says_delete_and_fetch_again(tmp_path, monkeypatch, good_bytes):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    # convmixer_64_4 has no released weights: use a released config's file name in the cache,
    # cut off as an interrupted download leaves it (the network is never touched).
    config = get_config("convmixer_768_32")
    cached = tmp_path / "checkpoints" / config.urls[0].rsplit("/", 1)[-1]
    cached.parent.mkdir()
    cached.write_bytes(good_bytes[:1000])
    with pytest.raises(CheckpointError) as info:
        get_model("convmixer_768_32", pretrained=True)
    message = str(info.value)
    assert f"{cached} (1,000 bytes) is damaged or not a checkpoint" in message
    assert f"delete it (rm {cached})" in message and "pretrained=True) again" in message
    assert "weights_only" not in message


class Payload:
    """An object whose unpickling would run a shell command: what weights-only loading stops."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_only_refused_globals_get_the_weights_only_advice_naming_them(tmp_path, legacy):
    marker = tmp_path / "ran"
    path = tmp_path / "pickled.pth"
    # With timm's argparse.Namespace beside it, which is allowed and must not be named.
    torch.save({"state_dict": get_model("convmixer_64_4").state_dict(), "args": argparse.Namespace(lr=0.1),
                "hook": Payload(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as info:
        get_model("convmixer_64_4", pretrained=str(path))
    message = str(info.value)
    assert message.startswith(f"{path} holds Python objects that a weights-only load refuses: "
                              f"{os.system.__module__}.system. ")
    assert "torch.load(path, weights_only=False)" in message and "damaged" not in message
    assert not marker.exists()


def test_damaged_safetensors_is_called_damaged(tmp_path):
    pytest.importorskip("safetensors")
    path = tmp_path / "cut.safetensors"
    path.write_bytes(_safetensors_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"\(20 bytes\) is damaged or not a checkpoint"):
        read_checkpoint(str(path))


def test_empty_missing_and_directory_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint path is empty \(an unset variable\?\)"):
        get_model("convmixer_64_4", pretrained="")
    with pytest.raises(FileNotFoundError, match=r"checkpoint file not found: .*nothing.pth$"):
        read_checkpoint(str(tmp_path / "nothing.pth"))
    with pytest.raises(FileNotFoundError, match=r"not found: .* \(it is a directory\)"):
        read_checkpoint(str(tmp_path))
