"""The 1000 ImageNet-1k class names, in the label order of the released weights.

data/imagenet_classes.txt holds one name a line: the first WordNet lemma of each
ILSVRC-2012 synset, in the order of the sorted synset ids (the order of an ImageFolder of
the validation set). Two synsets share a first lemma; they read "crane (bird)" /
"crane (machine)" and "maillot" / "tank suit", so that every name is unique.
"""

import functools
from importlib import resources
from typing import Tuple


@functools.lru_cache(maxsize=None)
def imagenet_classes() -> Tuple[str, ...]:
    text = resources.files("convmixer_kernels").joinpath("data", "imagenet_classes.txt").read_text("utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"data/imagenet_classes.txt has {len(names)} names, not 1000")
    return names
