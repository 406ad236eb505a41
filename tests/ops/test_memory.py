"""The fused training forward saves no activation-sized tensor beyond its input."""

import torch

from convmixer_kernels import FusedMixerBlock
from convmixer_kernels.reference import plain_mixer_block


def _saved(module, x):
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return saved


def test_training_saves_only_the_input_and_vectors():
    x = torch.randn(4, 32, 16, 16, requires_grad=True)
    fused = FusedMixerBlock(32, 7, backend="cpu").train()
    saved = _saved(fused, x)
    act_bytes = x.numel() * x.element_size()
    big = [n for n in saved.values() if n >= act_bytes]
    assert big == [act_bytes], saved           # x itself, nothing else activation-sized
    assert sum(saved.values()) - act_bytes < 32 * 7 * 7 * 4 * 4  # weights and per-channel vectors
    eager = sum(n >= act_bytes for n in _saved(plain_mixer_block(32, 7).train(), x).values())
    assert eager >= 3  # eager keeps the conv output, the activation, BN's input
