"""Top-1 / top-5 accuracy of a model over an ImageFolder-layout validation set, as
mmpretrain's tools/test.py and timm's validate.py report it.

    python -m convmixer_kernels.evaluate --model convmixer_768_32 --checkpoint FILE --data VAL_DIR
    python -m convmixer_kernels.evaluate --model convmixer_768_32 --pretrained --data VAL_DIR \\
        --batch-size 128 --workers 8 --channels-last --amp

The images get the model config's preprocessing (for the released weights: short side
233 bicubic, center crop 224, ImageNet mean and std).
"""

import argparse
import dataclasses
import functools
import sys
import time
import warnings
from typing import List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .imagefolder import ImageFolder
from .models import get_config, get_model
from .preprocess import preprocess, preprocess_args


@dataclasses.dataclass(frozen=True)
class Accuracy:
    top1: float  # percent
    top5: float  # percent; top-k with k = min(5, classes)
    images: int
    seconds: float

    def summary(self, name: str) -> str:
        return (f"{name}: top-1 {self.top1:.2f}%  top-5 {self.top5:.2f}%  over {self.images} images "
                f"in {self.seconds:.1f} s ({self.images / max(self.seconds, 1e-9):.1f} images/s)")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    channels_last: bool = False,
    amp: bool = False,
    progress: bool = True,
) -> Accuracy:
    """Top-1 and top-5 accuracy of `model` (eval mode) on `loader`'s (images, labels)."""
    model.eval()
    param = next(model.parameters())
    device = param.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # Autocast's half type of each device: float16 on CUDA, bfloat16 on the CPU.
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    correct1 = correct5 = seen = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc="evaluate", unit="batch", disable=not progress, file=sys.stderr)
    for images, labels in bar:
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
    return Accuracy(100 * correct1 / seen, 100 * correct5 / seen, seen, time.perf_counter() - start)


def make_loader(model: nn.Module, data: str, batch_size: int = 64, workers: int = 4) -> DataLoader:
    """A DataLoader over an ImageFolder at `data` with `model`'s preprocessing."""
    dataset = ImageFolder(data, functools.partial(preprocess, **preprocess_args(model)))
    if len(dataset.classes) > model.num_classes:
        raise ValueError(f"{data} has {len(dataset.classes)} class folders but the model has "
                         f"{model.num_classes} outputs")
    if len(dataset.classes) < model.num_classes:
        warnings.warn(f"{data} has {len(dataset.classes)} class folders, the model {model.num_classes} "
                      "outputs: folder i (in sorted order) is taken as class i", stacklevel=2)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                      pin_memory=torch.cuda.is_available())


def main(argv: Optional[List[str]] = None) -> Accuracy:
    parser = argparse.ArgumentParser(prog="python -m convmixer_kernels.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a config name, e.g. convmixer_768_32")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="weights in the official, timm or mmpretrain format")
    weights.add_argument("--pretrained", action="store_true", help="the released weights (downloaded once)")
    parser.add_argument("--data", required=True, help="validation directory, DIR/CLASS/IMAGE")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4, help="data loader processes (0: load in this one)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on the CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", help="the mixer-block backend")
    parser.add_argument("--eager", action="store_true", help="plain PyTorch blocks instead of the fused ones")
    parser.add_argument("--num-classes", type=int, help="override the config's class count")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = get_model(args.model, pretrained=args.checkpoint or True, fused=not args.eager,
                      backend=args.backend, device=args.device, **overrides)
    loader = make_loader(model, args.data, args.batch_size, args.workers)
    result = evaluate(model, loader, channels_last=args.channels_last, amp=args.amp, progress=not args.no_progress)
    published = get_config(args.model).top1
    note = f"  (published top-1 of the released weights: {published:.2f}%)" if args.pretrained and published else ""
    print(result.summary(args.model) + note)
    return result


if __name__ == "__main__":
    main()
