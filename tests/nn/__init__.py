"""Tests of the nn modules: FusedMixerBlock, ConvMixer, the swap, train/eval modes."""
