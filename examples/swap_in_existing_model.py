"""Swap the fused mixer block into a ConvMixer built elsewhere, in place.

The model below is built the way the paper writes ConvMixer: one flat nn.Sequential and a
Residual wrapper (timm and mmpretrain build theirs alike). swap_mixer_blocks replaces each
Residual(depthwise conv -> act -> BN) with a FusedMixerBlock that shares its parameters:
the outputs stay equal, the state_dict keys stay the same, and the blocks get faster.

    python examples/swap_in_existing_model.py                  # dim 768, depth 8, 224x224, batch 8
    python examples/swap_in_existing_model.py --dim 256 --depth 4 --image-size 64
"""

import argparse
import copy
import time

import torch
from torch import nn

from convmixer_kernels import available_backends, swap_mixer_blocks
from convmixer_kernels.cli.args import device_name, positive_int


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def plain_convmixer(dim: int, depth: int, kernel_size: int, patch_size: int, num_classes: int = 1000) -> nn.Sequential:
    def conv_act_bn(conv: nn.Module) -> list:
        return [conv, nn.GELU(), nn.BatchNorm2d(dim)]

    return nn.Sequential(
        *conv_act_bn(nn.Conv2d(3, dim, patch_size, stride=patch_size)),
        *[
            nn.Sequential(
                Residual(nn.Sequential(*conv_act_bn(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same")))),
                *conv_act_bn(nn.Conv2d(dim, dim, 1)),
            )
            for _ in range(depth)
        ],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(dim, num_classes),
    )


@torch.no_grad()
def median_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    model(x)  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=positive_int, default=768)
    parser.add_argument("--depth", type=positive_int, default=8)
    parser.add_argument("--kernel-size", type=positive_int, default=7)
    parser.add_argument("--patch-size", type=positive_int, default=7)
    parser.add_argument("--image-size", type=positive_int, default=224)
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    plain = plain_convmixer(args.dim, args.depth, args.kernel_size, args.patch_size).to(args.device)
    plain(torch.randn(16, 3, args.image_size, args.image_size, device=args.device))  # BN gets running statistics
    plain.eval()
    model = copy.deepcopy(plain)
    swapped = swap_mixer_blocks(model)
    assert model.state_dict().keys() == plain.state_dict().keys()

    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
    with torch.no_grad():
        expected, got = plain(x), model(x)
    difference = (got - expected).abs().max().item() / expected.abs().max().item()
    plain_ms, fused_ms = median_ms(plain, x, args.repeats), median_ms(model, x, args.repeats)
    print(f"swapped {swapped} mixer blocks; state_dict keys unchanged; backend {available_backends(args.device)[0]!r}")
    print(f"max |fused - plain| / max |plain| = {difference:.2e}")
    print(f"eval forward, batch {args.batch} at {args.image_size}x{args.image_size} on {args.device}: "
          f"plain {plain_ms:.1f} ms, fused {fused_ms:.1f} ms, speed-up {plain_ms / fused_ms:.2f}x")
    if difference > 1e-4:
        raise SystemExit("the swapped model's outputs differ from the plain model's")


if __name__ == "__main__":
    main()
