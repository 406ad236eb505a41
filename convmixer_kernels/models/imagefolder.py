"""An ImageFolder-layout dataset (DIR/CLASS/IMAGE), read with PIL, no torchvision.

Classes are the sorted subfolder names and their labels by default the positions in that
order: for an ImageNet validation folder of all 1000 synset-id subfolders, the released
weights' labels. `relabel` sets other labels (a subset of the classes, a class map).

A file that fails to load raises BrokenImageError naming it; with skip_broken=True the
dataset returns it as (None, label, "path: reason") instead, and `collate_skipping_broken`
drops such samples from a batch and hands their descriptions on.
"""

import os
from typing import Callable, Dict, List, Optional, Tuple

from torch.utils.data import Dataset, default_collate

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BrokenImageError(ValueError):
    """An image file that cannot be read or preprocessed; the message names the file."""


class ImageFolder(Dataset):
    def __init__(self, root: str, transform: Callable, skip_broken: bool = False):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"no such data directory: {root}")
        self.root = root
        self.transform = transform
        self.skip_broken = skip_broken
        self.classes: List[str] = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            raise ValueError(f"{root} has no class subfolders (expected DIR/CLASS/IMAGE)")
        self.samples: List[Tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
                self.samples.extend(
                    (os.path.join(folder, f), label)
                    for f in sorted(files)
                    if f.lower().endswith(IMAGE_EXTENSIONS)
                )
        if not self.samples:
            raise ValueError(f"{root} has no images with extensions {IMAGE_EXTENSIONS}")

    def relabel(self, labels: Dict[str, int]) -> None:
        """Gives each class folder the label `labels[folder name]`."""
        self.samples = [(path, labels[self.classes[old]]) for path, old in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = self.transform(path)
        except Exception as exc:  # any failure of one file: a decoder error, a refused size, ...
            reason = f"{path}: {type(exc).__name__}: {exc}"
            if not self.skip_broken:
                raise BrokenImageError(f"cannot read the image {reason} (skip_broken=True, evaluate's "
                                       "--skip-broken, skips such files and lists them)") from exc
            return None, label, reason
        return (image, label, None) if self.skip_broken else (image, label)


def collate_skipping_broken(batch: List[Tuple]) -> Tuple[Optional[object], Optional[object], List[str]]:
    """(images, labels, broken) of a batch from an ImageFolder with skip_broken=True:
    images and labels of the readable samples (None where none is), and the broken ones'
    descriptions."""
    good = [(image, label) for image, label, _ in batch if image is not None]
    broken = [reason for image, _, reason in batch if image is None]
    images, labels = default_collate(good) if good else (None, None)
    return images, labels, broken
