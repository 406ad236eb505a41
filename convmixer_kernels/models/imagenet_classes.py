"""The 1000 ImageNet-1k class names, in the label order of the released weights.

data/imagenet_classes.txt holds one name a line: the first WordNet lemma of each
ILSVRC-2012 synset, in the order of the sorted synset ids (the order of an ImageFolder of
the validation set). Two synsets share a first lemma; they read "crane (bird)" /
"crane (machine)" and "maillot" / "tank suit", so that every name is unique.
"""

import functools
import os
from importlib import metadata, resources
from typing import Optional, Tuple

# Where timm keeps the ILSVRC-2012 synset ids, one a line, sorted (= label order).
_TIMM_SYNSETS = "timm/data/_info/imagenet_synsets.txt"


@functools.lru_cache(maxsize=None)
def imagenet_classes() -> Tuple[str, ...]:
    text = resources.files("convmixer_kernels").joinpath("data", "imagenet_classes.txt").read_text("utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"data/imagenet_classes.txt has {len(names)} names, not 1000")
    return names


@functools.lru_cache(maxsize=None)
def imagenet_synsets() -> Optional[Tuple[str, ...]]:
    """The 1000 ILSVRC-2012 WordNet synset ids (n01440764, ...) in label order, read from
    the data file of an installed timm (found through its package metadata; timm itself
    is not imported), or None where timm is not installed. This package ships the class
    names only."""
    try:
        path = str(metadata.distribution("timm").locate_file(_TIMM_SYNSETS))
    except metadata.PackageNotFoundError:
        return None
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        ids = tuple(line.strip() for line in f if line.strip())
    # The label order is the sorted order of the ids: a file that is not it is not used.
    return ids if len(ids) == 1000 and list(ids) == sorted(ids) else None
