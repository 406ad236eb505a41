"""Top-1 / top-5 accuracy of a model over an ImageFolder-layout validation set, as
mmpretrain's tools/test.py and timm's validate.py report it.

    python -m convmixer_kernels.cli.evaluate --model convmixer_768_32 --checkpoint FILE --data VAL_DIR
    python -m convmixer_kernels.cli.evaluate --model convmixer_768_32 --pretrained --data VAL_DIR \\
        --batch-size 128 --workers 8 --channels-last --amp

The images get the model config's preprocessing (for the released weights: short side
233 bicubic, center crop 224, ImageNet mean and std).

Which output each class folder is: with --class-map FILE, the line of the folder's name in
FILE; else, where every folder is named after one of the model's classes (the ImageNet
names for 1000 outputs), that class; else, where every folder is a WordNet synset id and
the model has 1000 outputs, the synset's ImageNet-1k index (the synset list comes from an
installed timm; this package ships only the class names); else, with one folder per
output, the sorted order (an ImageNet validation folder of all 1000 synset ids). Anything
else is an error: a subset of the folders cannot be matched to outputs by its order.
A file that cannot be read stops the run with its name, unless --skip-broken is given:
then it is left out and listed in the summary.
"""

import argparse
import dataclasses
import functools
import re
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .args import (BACKEND_CHOICES, device_name, existing_dir, existing_file, model_name, non_negative_int,
                       positive_int)
from ..models.imagefolder import ImageFolder, collate_skipping_broken
from ..models.imagenet_classes import imagenet_synsets
from ..models.inference import class_names
from ..models import get_config, get_model
from ..models.preprocess import preprocess, preprocess_args


@dataclasses.dataclass(frozen=True)
class Accuracy:
    top1: float  # percent
    top5: float  # percent; top-k with k = min(5, classes)
    images: int
    seconds: float
    broken: Tuple[str, ...] = ()  # "path: reason" of each image skipped as unreadable

    def summary(self, name: str) -> str:
        text = (f"{name}: top-1 {self.top1:.2f}%  top-5 {self.top5:.2f}%  over {self.images} images "
                f"in {self.seconds:.1f} s ({self.images / max(self.seconds, 1e-9):.1f} images/s)")
        if self.broken:
            text += f"\nskipped {len(self.broken)} broken images:\n" + "\n".join(f"  {b}" for b in self.broken)
        return text


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    channels_last: bool = False,
    amp: bool = False,
    progress: bool = True,
) -> Accuracy:
    """Top-1 and top-5 accuracy of `model` (eval mode) on `loader`'s (images, labels)
    batches, or (images, labels, broken) ones from collate_skipping_broken."""
    model.eval()
    param = next(model.parameters())
    device = param.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # Autocast's half type of each device: float16 on CUDA, bfloat16 on the CPU.
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    correct1 = correct5 = seen = 0
    broken: List[str] = []
    start = time.perf_counter()
    bar = tqdm(loader, desc="evaluate", unit="batch", disable=not progress, file=sys.stderr)
    for images, labels, *skipped in bar:
        broken.extend(skipped[0] if skipped else ())
        if images is None:  # every image of the batch was skipped
            continue
        images = images.to(device, param.dtype, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            logits = model(images)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        seen += labels.numel()
        bar.set_postfix(top1=f"{100 * correct1 / seen:.2f}", top5=f"{100 * correct5 / seen:.2f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if seen == 0:
        first = f"; the first: {broken[0]}" if broken else ""
        raise ValueError(f"evaluate: none of the {len(broken)} images could be read{first}")
    return Accuracy(100 * correct1 / seen, 100 * correct5 / seen, seen, time.perf_counter() - start, tuple(broken))


_SYNSET = re.compile(r"n\d{8}")


def read_class_map(path: str) -> Dict[str, int]:
    """A class map file: one class a line, in the order of the model's outputs; a line's
    first word is the folder name, so the ImageNet devkit's LOC_synset_mapping.txt
    ("n01440764 tench, Tinca tinca") serves as it is."""
    with open(path, encoding="utf-8") as f:
        names = [line.split()[0] for line in f if line.strip()]
    mapping = {name: index for index, name in enumerate(names)}
    if len(mapping) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class map {path} names a folder more than once: {repeated[:10]}")
    return mapping


def class_labels(folders: Sequence[str], model: nn.Module, data: str,
                 class_map: Optional[str] = None) -> Dict[str, int]:
    """The model output of each class folder (see the module's docstring for the rules)."""
    outputs = model.num_classes
    if class_map is not None:
        return _labels_from_map(folders, outputs, data, class_map)
    if len(folders) > outputs:
        raise ValueError(f"{data} has {len(folders)} class folders but the model has {outputs} outputs")
    names = class_names(model)
    by_name = {} if names is None else {name: index for index, name in enumerate(names)}
    if by_name and all(f in by_name for f in folders):
        return {f: by_name[f] for f in folders}
    if outputs == 1000 and folders and all(_SYNSET.fullmatch(f) for f in folders):
        synsets = imagenet_synsets()
        if synsets is not None:
            by_synset = {s: index for index, s in enumerate(synsets)}
            unknown = [f for f in folders if f not in by_synset]
            if unknown:
                raise ValueError(f"{len(unknown)} class folders of {data} are not ImageNet-1k synsets: {unknown[:10]}")
            return {f: by_synset[f] for f in folders}
    if len(folders) == outputs:
        return {f: i for i, f in enumerate(folders)}
    raise ValueError(_unmatched_subset(folders, outputs, data))


def _labels_from_map(folders: Sequence[str], outputs: int, data: str, class_map: str) -> Dict[str, int]:
    mapping = read_class_map(class_map)
    if len(mapping) > outputs:
        raise ValueError(f"class map {class_map} has {len(mapping)} classes but the model has {outputs} outputs")
    unknown = [f for f in folders if f not in mapping]
    if unknown:
        raise ValueError(f"{len(unknown)} class folders of {data} are not in the class map {class_map}: {unknown[:10]}")
    return {f: mapping[f] for f in folders}


def _unmatched_subset(folders: Sequence[str], outputs: int, data: str) -> str:
    """Why a subset of folders whose names are not the model's classes cannot be labelled."""
    hint = ""
    if all(_SYNSET.fullmatch(f) for f in folders):
        hint = (" For WordNet synset folders (n01440764, ...) give the synset list in label order, e.g. the "
                "ImageNet devkit's LOC_synset_mapping.txt, or install timm, whose synset list is then used: this "
                "package ships the class names but not the synset ids.")
    return (
        f"{data} has {len(folders)} class folders for a model with {outputs} outputs, and the folder names "
        f"({', '.join(folders[:5])}{', ...' if len(folders) > 5 else ''}) are not the model's class names, so "
        "which output each folder is cannot be known (their sorted order is not the answer for a subset). "
        "Pass --class-map FILE (class_map=): one folder name a line, in the order of the model's outputs."
        + hint
    )


def make_loader(
    model: nn.Module,
    data: str,
    batch_size: int = 64,
    workers: int = 4,
    *,
    skip_broken: bool = False,
    class_map: Optional[str] = None,
) -> DataLoader:
    """A DataLoader over an ImageFolder at `data` with `model`'s preprocessing, each folder
    labelled with its model output (class_labels)."""
    dataset = ImageFolder(data, functools.partial(preprocess, **preprocess_args(model)), skip_broken=skip_broken)
    dataset.relabel(class_labels(dataset.classes, model, data, class_map))
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                      pin_memory=torch.cuda.is_available(),
                      collate_fn=collate_skipping_broken if skip_broken else None)


def main(argv: Optional[List[str]] = None) -> Accuracy:
    parser = argparse.ArgumentParser(prog="python -m convmixer_kernels.cli.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=model_name, help="a config name, e.g. convmixer_768_32")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=existing_file("a checkpoint file"),
                         help="weights in the official, timm or mmpretrain format")
    weights.add_argument("--pretrained", action="store_true", help="the released weights (downloaded once)")
    parser.add_argument("--data", required=True, type=existing_dir("the validation directory, DIR/CLASS/IMAGE"),
                        help="validation directory, DIR/CLASS/IMAGE")
    parser.add_argument("--class-map", type=existing_file("a class map file"),
                        help="one folder name a line, in the order of the model's outputs (see above)")
    parser.add_argument("--skip-broken", action="store_true",
                        help="leave out images that cannot be read, and list them in the summary")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=non_negative_int, default=4,
                        help="data loader processes (0: load in this one)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on the CPU)")
    parser.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="the mixer-block backend")
    parser.add_argument("--eager", action="store_true", help="plain PyTorch blocks instead of the fused ones")
    parser.add_argument("--num-classes", type=positive_int, help="override the config's class count")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = get_model(args.model, pretrained=True if args.pretrained else args.checkpoint, fused=not args.eager,
                      backend=args.backend, device=args.device, **overrides)
    loader = make_loader(model, args.data, args.batch_size, args.workers,
                         skip_broken=args.skip_broken, class_map=args.class_map)
    result = evaluate(model, loader, channels_last=args.channels_last, amp=args.amp, progress=not args.no_progress)
    published = get_config(args.model).top1
    note = f"  (published top-1 of the released weights: {published:.2f}%)" if args.pretrained and published else ""
    print(result.summary(args.model) + note)
    return result


if __name__ == "__main__":
    main()
