"""Tests of convmixer_kernels/ops: the op, its torch.library layers, backend choice, sync."""
