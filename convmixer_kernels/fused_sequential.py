"""FusedSequential: an nn.Sequential whose Conv2d(stride = kernel) -> act -> BatchNorm2d
runs run as one gemm_epilogue op (ops/gemm_epilogue.py): ConvMixer's pointwise block
Conv2d(h, h, 1) -> act -> BN and its stem Conv2d(3, h, p, stride=p) -> act -> BN.

It keeps the modules and their names, so state_dict keys stay those of the Sequential it
replaces (timm's stem.0 / stem.2 and blocks.{i}.1 / blocks.{i}.3, mmpretrain's, the
official per-block Sequentials); other children run as nn.Sequential runs them.
"""

from typing import List, Optional, Tuple

from torch import Tensor, nn

from .batchnorm_mode import batchnorm_mode
from .ops.gemm_epilogue import patch_conv_block
from .reference import ACTIVATIONS, activation_name


def why_not_patch_triple(conv: nn.Module, act: nn.Module, bn: nn.Module) -> Optional[str]:
    """None if (conv, act, bn) is Conv2d(C, O, p, stride=p) (p = 1: pointwise) -> a
    supported activation -> BatchNorm2d(O); otherwise what differs."""
    if type(conv) is not nn.Conv2d:
        return f"expected nn.Conv2d, got {type(conv).__name__}"
    k = conv.kernel_size
    if k[0] != k[1] or conv.stride != k:
        return f"the conv must be a square patch conv with stride = kernel size, got kernel {k} stride {conv.stride}"
    if conv.padding not in ((0, 0), "valid") or conv.dilation != (1, 1) or conv.groups != 1:
        return "the conv must have no padding, dilation 1 and groups 1"
    if activation_name(act) is None:
        return f"the activation must be one of nn.GELU, nn.ReLU, nn.SiLU ({ACTIVATIONS}), got {type(act).__name__}"
    if type(bn) not in (nn.BatchNorm2d, nn.SyncBatchNorm) or bn.num_features != conv.out_channels:
        return f"expected nn.BatchNorm2d({conv.out_channels}) after the activation, got {bn}"
    return None


def patch_triples(seq: nn.Sequential) -> List[int]:
    """Start indices of the non-overlapping fusable (conv, act, bn) runs in seq, in order."""
    mods, starts, i = list(seq), [], 0
    while i + 2 < len(mods):
        if why_not_patch_triple(*mods[i:i + 3]) is None:
            starts.append(i)
            i += 3
        else:
            i += 1
    return starts


def triple_kind(conv: nn.Conv2d) -> str:
    return "pointwise" if conv.kernel_size == (1, 1) else "stem"


class FusedSequential(nn.Sequential):
    """nn.Sequential with each Conv2d(stride = kernel) -> act -> BatchNorm2d run fused.

    The BatchNorm decides batch or running statistics as nn.BatchNorm2d does
    (batchnorm_mode.py). A fused run's output is channels_last (its GEMM rows are
    positions), equal in value to eager's. Runs whose BatchNorm is an nn.SyncBatchNorm
    (convert_sync_batchnorm on CUDA) run the plain modules, which synchronize; hooks on a
    fused run's modules raise, as the fused op would not call them.
    """

    def __init__(self, *modules: nn.Module, backend: str = "auto"):
        super().__init__(*modules)
        self.backend = backend
        self.fused_starts: Tuple[int, ...] = tuple(patch_triples(self))

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, backend: str = "auto") -> "FusedSequential":
        """A FusedSequential sharing seq's modules under their names."""
        fused = cls(backend=backend)
        for name, module in seq.named_children():
            fused.add_module(name, module)
        fused.fused_starts = tuple(patch_triples(fused))
        fused.train(seq.training)
        return fused

    def kinds(self) -> List[str]:
        return [triple_kind(self[i]) for i in self.fused_starts]

    def forward(self, x: Tensor) -> Tensor:
        mods = list(self)
        i = 0
        while i < len(mods):
            if i not in self.fused_starts or isinstance(mods[i + 2], nn.SyncBatchNorm):
                x = mods[i](x)
                i += 1
                continue
            conv, act, bn = mods[i:i + 3]
            if any(m._forward_pre_hooks or m._forward_hooks or m._backward_hooks or m._backward_pre_hooks
                   for m in (conv, act, bn)):
                raise RuntimeError(f"FusedSequential: a module of the fused run at index {i}..{i + 2} carries a hook "
                                   "(or an old-style reparametrization), which the fused op would not run: remove "
                                   "it, or turn the model back with unswap_mixer_blocks")
            mode = batchnorm_mode(bn)
            x = patch_conv_block(
                x, conv.weight, conv.bias, bn.weight, bn.bias,
                bn.running_mean if mode.use_running else None, bn.running_var if mode.use_running else None,
                training=mode.batch_stats, momentum=mode.momentum, eps=bn.eps, activation=activation_name(act),
                backend=self.backend)
            mode.count(bn)
            i += 3
        return x

    def extra_repr(self) -> str:
        return f"fused at {list(self.fused_starts)} ({', '.join(self.kinds())}), backend={self.backend!r}"
