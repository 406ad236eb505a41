"""Parameters and multiply-accumulates (MACs) of ConvMixer models, with and without the
depthwise convolutions, and the convention of the published FLOP figures.

    python -m convmixer_kernels.cli.count                    # every named model at its input size
    python -m convmixer_kernels.cli.count --model convmixer_768_32 --input-size 288

MACs here are the multiply-accumulates of the convolutions and the classifier, the count
that sets the arithmetic cost (a FLOP count is about twice it). The published 19.62 /
5.55 / 48.71 G figures (the mmpretrain model zoo's) count something else: what mmcv's
get_model_complexity_info records for the backbone and the global pool, which is the
multiply-adds of the patch and pointwise convs, one add per output of each conv bias,
2 per element for each BatchNorm, 1 per element for each ReLU (GELU is not counted) and
for the average pool, and leaves out the depthwise convs and the classifier.
`published_convention` reproduces 19,623,051,264 / 5,550,112,768 / 48,713,170,944 exactly.
"""

import argparse
import dataclasses
from typing import List, Optional, Sequence

from .args import model_name, positive_int
from ..models import get_config, list_models


@dataclasses.dataclass(frozen=True)
class Count:
    name: str
    input_size: int
    params: int
    params_depthwise: int
    macs: int
    macs_depthwise: int
    published_convention: int

    @property
    def params_without_depthwise(self) -> int:
        return self.params - self.params_depthwise

    @property
    def macs_without_depthwise(self) -> int:
        return self.macs - self.macs_depthwise


def count_architecture(
    dim: int,
    depth: int,
    kernel_size: int,
    patch_size: int,
    num_classes: int = 1000,
    in_chans: int = 3,
    input_size: int = 224,
    activation: str = "gelu",
    name: str = "",
) -> Count:
    """Counts for a ConvMixer of these sizes on input_size x input_size images."""
    if input_size < patch_size:
        raise ValueError(f"count: input_size must be at least the patch size {patch_size}, got {input_size}")
    h, d, k, p, n = dim, depth, kernel_size, patch_size, num_classes
    positions = (input_size // p) ** 2
    stem_macs = positions * h * in_chans * p * p
    pointwise_macs = d * positions * h * h
    depthwise_macs = d * positions * h * k * k
    macs = stem_macs + pointwise_macs + depthwise_macs + h * n
    params = h * (in_chans * p * p + 1) + 2 * h + d * (h * (k * k + 1) + 2 * h + h * (h + 1) + 2 * h) + h * n + n
    norms = 1 + 2 * d  # BatchNorms, and activations, each over h x positions elements
    elements = h * positions
    published = (
        stem_macs + elements                       # patch conv and its bias
        + pointwise_macs + d * elements            # pointwise convs and their biases
        + norms * 2 * elements                     # BatchNorm: scale and shift
        + (norms * elements if activation == "relu" else 0)
        + elements                                 # global average pool
    )
    return Count(
        name=name,
        input_size=input_size,
        params=params,
        params_depthwise=d * h * (k * k + 1),
        macs=macs,
        macs_depthwise=depthwise_macs,
        published_convention=published,
    )


def count_model(name: str, input_size: Optional[int] = None, **overrides) -> Count:
    """Counts for a named config (overrides: num_classes, in_chans, ...)."""
    config = get_config(name)
    kwargs = dict(
        dim=config.dim, depth=config.depth, kernel_size=config.kernel_size,
        patch_size=config.patch_size, num_classes=config.num_classes,
        activation=config.activation,
        input_size=config.input_size if input_size is None else input_size,
    )
    return count_architecture(**{**kwargs, **overrides}, name=config.name)


def format_table(counts: Sequence[Count]) -> str:
    header = ("model", "input", "params", "params w/o dw", "GMACs", "GMACs w/o dw", "published-convention G")
    rows = [header] + [
        (c.name, f"{c.input_size}", f"{c.params:,}", f"{c.params_without_depthwise:,}",
         f"{c.macs / 1e9:.4g}", f"{c.macs_without_depthwise / 1e9:.4g}", f"{c.published_convention / 1e9:.4g}")
        for c in counts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in rows)


CONVENTION_NOTE = (
    "GMACs: multiply-accumulates of all convolutions and the classifier. The published "
    "19.62 / 5.55 / 48.71 G figures use mmcv's convention (conv multiply-adds plus bias adds, "
    "2 per element per BatchNorm, 1 per element per ReLU and for the pool, GELU uncounted) "
    "and leave out the depthwise convolutions and the classifier: the last column."
)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m convmixer_kernels.cli.count", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", type=model_name, help="a config name (repeatable; default: all)")
    parser.add_argument("--input-size", type=positive_int, help="image side in pixels (default: each config's)")
    args = parser.parse_args(argv)
    names = args.model or list_models()
    try:
        counts = [count_model(name, args.input_size) for name in names]
    except ValueError as exc:  # an input size below a model's patch size
        parser.error(f"argument --input-size: {exc}")
    print(format_table(counts))
    print(CONVENTION_NOTE)


if __name__ == "__main__":
    main()
