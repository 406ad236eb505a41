"""ConvMixer, the whole network, built of the fused blocks (or the plain eager ones)."""

import functools
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..fused_sequential import FusedSequential
from ..modules import FusedMixerBlock, refuse_script
from ..ops.gemm_epilogue import gemm_backend_for
from ..reference import Residual, activation_module, plain_mixer_block


class ConvMixer(nn.Module):
    """ConvMixer (Trockman & Kolter, arXiv 2201.09792) with timm's state_dict keys:
    stem.0, stem.2, blocks.{i}.0.fn.0, blocks.{i}.0.fn.2, blocks.{i}.1, blocks.{i}.3, head.

    fused=True runs every block kind through the library's ops: the mixer blocks as
    FusedMixerBlock, the stem and the pointwise blocks as FusedSequential (one
    gemm_epilogue op each; the trunk's maps are then channels_last). fused="mixer" fuses
    only the mixer blocks (the model before the pointwise op, for comparison);
    fused=False builds the plain eager model (reference.Residual blocks).

    The API of both timm's ConvMixer and mmpretrain's classifier is here:
    - timm: forward_features (the last map), forward_head(x, pre_logits), get_classifier,
      reset_classifier, set_grad_checkpointing, num_features, drop_rate.
    - mmpretrain: extract_feat(x, stage), out_indices (blocks whose maps "backbone" returns;
      negative indices count from the end) and frozen_stages.
    frozen_stages=n keeps the stem and the first n blocks in eval mode with
    requires_grad=False across train() calls. mmpretrain's ConvMixer leaves the stem
    trainable, which then trains beneath frozen blocks; here it freezes with them, as the
    stem does in mmpretrain's other backbones.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        kernel_size: int = 9,
        patch_size: int = 7,
        in_chans: int = 3,
        num_classes: int = 1000,
        activation: str = "gelu",
        fused: Union[bool, str] = True,
        backend: str = "auto",
        out_indices: Union[int, Sequence[int]] = -1,
        frozen_stages: int = 0,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.num_features = dim
        self.num_classes = num_classes
        self.depth = depth
        self.kernel_size = kernel_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.activation = activation
        self.out_indices = self._normalize_out_indices(out_indices, depth)
        if not 0 <= frozen_stages <= depth:
            raise ValueError(f"ConvMixer: frozen_stages must be in [0, {depth}], got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self.grad_checkpointing = False
        # Preprocessing and provenance, set by models.get_model; None means ImageNet defaults.
        self.pretrained_cfg = None
        if fused not in (True, False, "mixer"):
            raise ValueError(f"ConvMixer: fused must be True, False or 'mixer', got {fused!r}")
        # fused=True: the stem and the pointwise blocks run as gemm_epilogue ops too.
        sequential = (functools.partial(FusedSequential, backend=gemm_backend_for(backend)) if fused is True
                      else nn.Sequential)
        self.stem = sequential(
            nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size),
            activation_module(activation),
            nn.BatchNorm2d(dim),
        )

        def mixer():
            if fused:
                return FusedMixerBlock(dim, kernel_size, activation, backend)
            return plain_mixer_block(dim, kernel_size, activation)

        self.blocks = nn.Sequential(
            *[
                sequential(
                    mixer(),
                    nn.Conv2d(dim, dim, kernel_size=1),
                    activation_module(activation),
                    nn.BatchNorm2d(dim),
                )
                for _ in range(depth)
            ]
        )
        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self._freeze_stages()

    @staticmethod
    def _normalize_out_indices(out_indices, depth: int) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        normalized = []
        for index in out_indices:
            block = depth + index if index < 0 else index
            if not 0 <= block < depth:
                raise ValueError(f"ConvMixer: out_indices entry {index} is outside a model of depth {depth}")
            normalized.append(block)
        # Maps come out in block order, each once, as mmpretrain's backbone returns them.
        return tuple(sorted(set(normalized)))

    __prepare_scriptable__ = refuse_script

    def train(self, mode: bool = True) -> "ConvMixer":
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        if self.frozen_stages == 0:
            return
        for module in (self.stem, *self.blocks[: self.frozen_stages]):
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them; the
        BatchNorm running statistics still update once per step."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh classifier for `num_classes` (0: none, forward returns pooled features)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"ConvMixer: only average pooling ('avg') is supported, got {global_pool!r}")
        self.num_classes = num_classes
        ref = self.stem[0].weight
        self.head = (
            nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return block(x)
        # The recomputation in backward runs the block's BatchNorms in training mode a
        # second time; restoring their buffers afterwards keeps one update per step.
        buffers = list(block.buffers())
        calls = 0

        def run(inp: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            if calls == 1:
                return block(inp)
            saved = [b.clone() for b in buffers]
            try:
                return block(inp)
            finally:
                # finally: checkpoint may stop a recomputation early by raising.
                for buf, value in zip(buffers, saved):
                    buf.copy_(value)

        return torch.utils.checkpoint.checkpoint(run, x, use_reentrant=False)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last block's map, (N, dim, H / patch, W / patch)."""
        x = self.stem(x)
        for block in self.blocks:
            x = self._run_block(block, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(torch.flatten(self.pooling(x), 1))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def extract_feat(self, x: Tensor, stage: str = "neck"):
        """mmpretrain's ImageClassifier.extract_feat: "backbone" gives the maps of the
        out_indices blocks (a tuple, block order), "neck" their global average pools (a
        tuple of (N, dim)), "pre_logits" the last of those pools (a tensor). Blocks past
        the last out index are not run."""
        if stage not in ("backbone", "neck", "pre_logits"):
            raise ValueError(f"ConvMixer.extract_feat: stage must be 'backbone', 'neck' or 'pre_logits', got {stage!r}")
        x = self.stem(x)
        maps = []
        for i, block in enumerate(self.blocks[: self.out_indices[-1] + 1]):
            x = self._run_block(block, x)
            if i in self.out_indices:
                maps.append(x)
        if stage == "backbone":
            return tuple(maps)
        pooled = tuple(torch.flatten(self.pooling(m), 1) for m in maps)
        return pooled if stage == "neck" else pooled[-1]
