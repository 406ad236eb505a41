"""An ImageFolder-layout dataset (DIR/CLASS/IMAGE), read with PIL, no torchvision.

Classes are the sorted subfolder names and their labels the positions in that order:
for an ImageNet validation folder of synset-id subfolders, the released weights' labels.
"""

import os
from typing import Callable, List, Tuple

from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolder(Dataset):
    def __init__(self, root: str, transform: Callable):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"no such data directory: {root}")
        self.root = root
        self.transform = transform
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

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(path), label
