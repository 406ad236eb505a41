"""The released weights: where they are published and where they are cached.

get_model(name, pretrained=True) looks for the file in the cache (torch.hub's checkpoint
folder, $TORCH_HOME/hub/checkpoints), downloads it from the published URLs otherwise, and
without a network fails with a message naming the file, where to fetch it and where to
put it.
"""

import os
from typing import List

import torch

from .configs import ModelConfig, list_models


def cache_dir() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _download(url: str, destination: str) -> None:
    # The one place that touches the network; tests replace it.
    torch.hub.download_url_to_file(url, destination, progress=True)


def _file_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def fetch_pretrained(config: ModelConfig) -> str:
    """The local path of `config`'s released weights, downloading them if needed."""
    if not config.urls:
        raise ValueError(
            f"{config.name} has no released weights; pass a checkpoint file as pretrained=PATH "
            f"(models with released weights: {', '.join(list_models(pretrained=True))})"
        )
    folder = cache_dir()
    for url in config.urls:
        path = os.path.join(folder, _file_name(url))
        if os.path.isfile(path):
            return path
    errors: List[str] = []
    for url in config.urls:
        path = os.path.join(folder, _file_name(url))
        os.makedirs(folder, exist_ok=True)
        try:
            _download(url, path)
            return path
        except Exception as exc:  # any failure: try the next mirror, then explain
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
    first = config.urls[0]
    raise RuntimeError(
        f"could not download the released weights of {config.name} (no network?).\n"
        + "\n".join(f"  {e}" for e in errors)
        + f"\nFetch {_file_name(first)} from {first} (or any of the URLs above) on a machine "
        f"with network, then either put it in {folder} or pass its path: "
        f"get_model({config.name!r}, pretrained='/path/to/{_file_name(first)}')"
    )

