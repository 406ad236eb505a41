"""FusedMixerBlock and the module swap for models built elsewhere (the drop-in ConvMixer
built of them is models/convmixer.py).

FusedMixerBlock keeps its parameters in an inner `fn = Sequential(Conv2d, act, BatchNorm2d)`
exactly as the Residual blocks of the official code, timm and mmpretrain do, so state_dicts
move between them unchanged and a swap only replaces the Residual wrapper.
"""

import itertools
import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .batchnorm_mode import batchnorm_mode
from .fused_sequential import FusedSequential, patch_triples, triple_kind
from .ops import mixer_block
from .ops.gemm_epilogue import gemm_backend_for
from .reference import (
    ACTIVATIONS,
    MAX_KERNEL_SIZE,
    Residual,
    activation_module,
    activation_name,
    plain_mixer_block,
)


def refuse_script(module: nn.Module):
    # torch.jit.script calls __prepare_scriptable__ on every submodule before compiling:
    # the one place to say it is unsupported before TorchScript fails deep in the source.
    raise RuntimeError(
        f"torch.jit.script does not support {type(module).__name__} (its forward is Python that "
        "TorchScript cannot compile, and the fused op is a Python custom op): use torch.compile(model), "
        "or torch.jit.trace(model, example_input) for a TorchScript module, or convmixer_kernels.cli.export "
        "for ONNX"
    )


class FusedMixerBlock(nn.Module):
    """x + BatchNorm2d(act(depthwise Conv2d(x))) in one fused op.

    Which statistics it normalizes with, and whether it updates the running ones, follow
    fn[2] exactly as nn.BatchNorm2d decides (its own training flag,
    track_running_stats, momentum=None), never this block's flag. Hooks on fn or its
    modules would not run, so a forward with any raises. With convert_sync_batchnorm, or
    an nn.SyncBatchNorm as fn[2], a training BatchNorm uses the statistics of every
    process (ops/sync.py).

    State-dict keys: fn.0.weight, fn.0.bias, fn.2.weight, fn.2.bias, fn.2.running_mean,
    fn.2.running_var, fn.2.num_batches_tracked.
    """

    def __init__(self, dim: int, kernel_size: int, activation: str = "gelu", backend: str = "auto"):
        super().__init__()
        self.fn = plain_mixer_block(dim, kernel_size, activation).fn
        self.backend = backend
        # Set by convert_sync_batchnorm: synchronize the batch statistics over
        # sync_process_group (None: the default group). An nn.SyncBatchNorm in fn[2]
        # synchronizes over its own process_group without this flag.
        self.sync_stats = False
        self.sync_process_group = None

    @classmethod
    def from_sequential(cls, fn: nn.Sequential, backend: str = "auto") -> "FusedMixerBlock":
        """Wraps an existing Conv2d -> act -> BatchNorm2d Sequential, sharing its modules."""
        reason = why_not_mixer_sequential(fn)
        if reason is not None:
            raise ValueError(f"FusedMixerBlock.from_sequential: {reason}")
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block.fn = fn
        block.backend = backend
        block.sync_stats = False
        block.sync_process_group = None
        block.train(fn.training)  # a swap must not flip an eval model into training
        return block

    @property
    def activation(self) -> str:
        return activation_name(self.fn[1])

    def forward(self, x: Tensor) -> Tensor:
        conv, bn = self.fn[0], self.fn[2]
        reason = hooks_reason(self.fn)
        if reason is not None:
            raise RuntimeError(f"FusedMixerBlock: {reason}; the fused op computes the block without calling "
                               "its modules, so remove it or turn the block back with unswap_mixer_blocks")
        mode = batchnorm_mode(bn)
        sync, group = self._sync_request(bn)
        y = mixer_block(
            x,
            conv.weight,
            conv.bias,
            bn.weight,
            bn.bias,
            bn.running_mean if mode.use_running else None,
            bn.running_var if mode.use_running else None,
            training=mode.batch_stats,
            momentum=mode.momentum,
            eps=bn.eps,
            activation=self.activation,
            backend=self.backend,
            # As nn.SyncBatchNorm: only a training BatchNorm synchronizes.
            sync=sync and bn.training,
            process_group=group,
        )
        mode.count(bn)
        return y

    def _sync_request(self, bn: nn.Module):
        if isinstance(bn, nn.SyncBatchNorm):
            return True, bn.process_group
        # getattr: whole-model pickles made before these attributes existed.
        return getattr(self, "sync_stats", False), getattr(self, "sync_process_group", None)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, backend={self.backend!r}"

    __prepare_scriptable__ = refuse_script


def why_not_mixer_sequential(fn: nn.Module) -> Optional[str]:
    """None if `fn` is Sequential(depthwise 'same' Conv2d, supported act, BatchNorm2d);
    otherwise what differs."""
    if not isinstance(fn, nn.Sequential) or len(fn) != 3:
        return "expected nn.Sequential(Conv2d, activation, BatchNorm2d)"
    conv, act, bn = fn
    if type(conv) is not nn.Conv2d:
        return f"fn[0] must be nn.Conv2d, got {type(conv).__name__}"
    k = conv.kernel_size
    if not (conv.in_channels == conv.out_channels == conv.groups):
        return "fn[0] must be depthwise (groups == in_channels == out_channels)"
    if k[0] != k[1] or not 1 <= k[0] <= MAX_KERNEL_SIZE:
        return f"fn[0] kernel must be square with size in [1, {MAX_KERNEL_SIZE}], got {k}"
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return "fn[0] must have stride 1, dilation 1 and zero padding"
    # An integer padding is 'same' only for odd k (k // 2 on both sides).
    if conv.padding != "same" and not (k[0] % 2 == 1 and conv.padding == (k[0] // 2, k[0] // 2)):
        return f"fn[0] padding must be 'same', got {conv.padding}"
    if activation_name(act) is None:
        return f"fn[1] must be one of nn.GELU, nn.ReLU, nn.SiLU (activations {ACTIVATIONS}), got {type(act).__name__}"
    if type(bn) not in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return f"fn[2] must be nn.BatchNorm2d or nn.SyncBatchNorm, got {type(bn).__name__}"
    if bn.num_features != conv.out_channels:
        return "fn[2] must have the conv's channel count"
    return None


def _hook_kind(hook) -> str:
    # The old-style reparametrizations are forward pre-hooks of these classes.
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    if isinstance(hook, WeightNorm):
        return "an old-style weight_norm reparametrization (torch.nn.utils.weight_norm)"
    if isinstance(hook, SpectralNorm):
        return "an old-style spectral_norm reparametrization (torch.nn.utils.spectral_norm)"
    if isinstance(hook, prune.BasePruningMethod):
        return "a pruning reparametrization (torch.nn.utils.prune)"
    return ""


def hooks_reason(fn: nn.Module, owner: Optional[nn.Module] = None) -> Optional[str]:
    """None if neither `fn`, its children nor `owner` (the Residual a swap would replace)
    carry hooks that run when they are called; otherwise which module carries what. The
    fused op never calls these modules, so such hooks (forward, pre-forward, backward,
    and the old-style weight_norm / spectral_norm / pruning reparametrizations, which
    are forward pre-hooks) would silently stop running."""
    modules = [("fn", fn), *((f"fn[{i}]", m) for i, m in enumerate(fn.children()))]
    if owner is not None:
        modules.insert(0, ("the residual block", owner))
    for where, module in modules:
        for hook in module._forward_pre_hooks.values():
            return f"{where} carries {_hook_kind(hook) or 'a forward pre-hook'}"
        if module._forward_hooks:
            return f"{where} carries a forward hook"
        if module._backward_hooks or module._backward_pre_hooks:
            return f"{where} carries a backward hook"
    return None


def _is_residual_mixer(module: nn.Module) -> bool:
    # The official code, timm and mmpretrain each define a class named Residual whose
    # forward is fn(x) + x; the name and the shape of fn identify the block.
    return (
        type(module).__name__ == "Residual"
        and isinstance(getattr(module, "fn", None), nn.Module)
        and why_not_mixer_sequential(module.fn) is None
    )


class SwapCounts(int):
    """How many blocks a swap changed, per kind. As an int: the mixer blocks (what
    swap_mixer_blocks has always returned); .pointwise and .stem count the fused
    Conv2d(stride = kernel) -> act -> BatchNorm2d runs, .by_kind has all three."""

    def __new__(cls, mixer: int = 0, pointwise: int = 0, stem: int = 0):
        counts = super().__new__(cls, mixer)
        counts.mixer, counts.pointwise, counts.stem = mixer, pointwise, stem
        return counts

    @property
    def by_kind(self) -> dict:
        return {"mixer": self.mixer, "pointwise": self.pointwise, "stem": self.stem}

    def __repr__(self) -> str:
        return f"SwapCounts(mixer={self.mixer}, pointwise={self.pointwise}, stem={self.stem})"

    def __str__(self) -> str:
        # Printed and formatted as the number it has always been.
        return str(self.mixer)

    __format__ = int.__format__


SWAP_KINDS = ("mixer", "pointwise", "stem")


def swap_mixer_blocks(model: nn.Module, backend: str = "auto", kinds: Sequence[str] = SWAP_KINDS) -> SwapCounts:
    """Replaces, in place, every block of `kinds` in `model` by its fused module, sharing
    the modules (parameters, buffers and state_dict keys are unchanged); returns the
    counts per kind (an int: the mixer blocks).

    - "mixer": every Residual(Conv2d depthwise 'same' -> act -> BatchNorm2d) becomes a
      FusedMixerBlock.
    - "pointwise" / "stem": every nn.Sequential below `model` holding Conv2d(C, O, p,
      stride=p) -> act -> BatchNorm2d runs (p = 1: the pointwise block; p > 1: the
      stem) becomes a FusedSequential (fused_sequential.py), which runs them as one
      gemm_epilogue op. `model` itself is not replaced, so the official code's flat
      Sequential keeps its stem (its per-block Sequentials are swapped).

    A block whose modules carry hooks or old-style reparametrizations (weight_norm,
    spectral_norm, pruning) is left as it is, with a warning naming it and the hook: the
    fused op would not run them."""
    unknown = sorted(set(kinds) - set(SWAP_KINDS))
    if unknown:
        raise ValueError(f"swap_mixer_blocks: kinds must be among {SWAP_KINDS}, got {unknown}")
    counts = dict.fromkeys(SWAP_KINDS, 0)

    def hooked(path, fn, owner):
        reason = hooks_reason(fn, owner=owner)
        if reason is not None:
            warnings.warn(f"swap_mixer_blocks: left {path!r} unswapped: {reason}, which the fused op "
                          "would not run", UserWarning, stacklevel=3)
        return reason is not None

    # Mixer blocks first: a Sequential swapped afterwards shares the swapped children.
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            path = f"{parent_name}.{child_name}" if parent_name else child_name
            if "mixer" in kinds and _is_residual_mixer(child) and not hooked(path, child.fn, child):
                setattr(parent, child_name, FusedMixerBlock.from_sequential(child.fn, backend))
                counts["mixer"] += 1
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not nn.Sequential:
                continue
            path = f"{parent_name}.{child_name}" if parent_name else child_name
            runs = [i for i in patch_triples(child) if triple_kind(child[i]) in kinds
                    and not hooked(f"{path}[{i}:{i + 3}]", nn.Sequential(*child[i:i + 3]), None)]
            if len(runs) != len(patch_triples(child)) or not runs:
                continue
            setattr(parent, child_name, FusedSequential.from_sequential(child, gemm_backend_for(backend)))
            for i in runs:
                counts[triple_kind(child[i])] += 1
    return SwapCounts(**counts)


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """Makes every FusedMixerBlock in `model` synchronize its BatchNorm statistics over
    `process_group` (None: the default group) while its BatchNorm trains, in place;
    returns `model`. On CUDA the model's other BatchNorms become nn.SyncBatchNorm
    (nn.SyncBatchNorm.convert_sync_batchnorm), so the whole model is synchronized. On
    the CPU, where nn.SyncBatchNorm does not run, only the fused blocks synchronize and
    a warning names how many other BatchNorms stay per-process. With no initialized
    process group, or a group of one process, the blocks run exactly as unsynchronized."""
    on_cuda = any(t.is_cuda for t in itertools.chain(model.parameters(), model.buffers()))
    if on_cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    for module in model.modules():
        if isinstance(module, FusedMixerBlock):
            module.sync_stats = True
            module.sync_process_group = process_group
    if not on_cuda:
        inner = {id(m.fn[2]) for m in model.modules() if isinstance(m, FusedMixerBlock)}
        others = [m for m in model.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inner]
        if others:
            warnings.warn(f"convert_sync_batchnorm: the model is not on CUDA, so its {len(others)} BatchNorm "
                          "layers outside the fused mixer blocks keep per-process statistics (nn.SyncBatchNorm "
                          "runs on CUDA only); the fused blocks synchronize", UserWarning, stacklevel=2)
    return model


def unswap_mixer_blocks(model: nn.Module) -> SwapCounts:
    """Turns every FusedMixerBlock in `model` back into a plain Residual(fn), and every
    FusedSequential into an nn.Sequential of the same modules, in place (for export or
    eager debugging); returns the counts per kind (an int: the mixer blocks)."""
    counts = dict.fromkeys(SWAP_KINDS, 0)
    # Mixer blocks first, while their parents are still the modules that the model holds.
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, FusedMixerBlock):
                setattr(parent, child_name, Residual(child.fn))
                counts["mixer"] += 1
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, FusedSequential):
                for kind in child.kinds():
                    counts[kind] += 1
                plain = nn.Sequential()
                for name, module in child.named_children():
                    plain.add_module(name, module)
                setattr(parent, child_name, plain.train(child.training))
    return SwapCounts(**counts)
