"""How a fused module runs its BatchNorm: nn.BatchNorm2d.forward's rules, read from the
BatchNorm itself (FusedMixerBlock, FusedSequential)."""

from typing import NamedTuple

from torch import nn


class BatchNormMode(NamedTuple):
    momentum: float
    batch_stats: bool  # normalize with the batch's statistics
    use_running: bool  # pass the running statistics (updated when batch_stats)
    counts_batch: bool  # num_batches_tracked advances

    def count(self, bn: nn.Module) -> None:
        # Called after the fused call succeeded, so that a call that raises leaves no trace.
        if self.counts_batch:
            bn.num_batches_tracked.add_(1)


def batchnorm_mode(bn: nn.Module) -> BatchNormMode:
    """nn.BatchNorm2d.forward's rules, read from the BatchNorm itself (never from the fused
    module's own flag): frozen-BN fine-tuning puts the BN in eval inside a training model,
    BN re-estimation trains it inside an eval model."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    counts_batch = bn.training and bn.track_running_stats and bn.num_batches_tracked is not None
    if counts_batch and bn.momentum is None:
        # The cumulative average over the batches so far, this one included.
        momentum = 1.0 / float(bn.num_batches_tracked + 1)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    use_running = not bn.training or bn.track_running_stats
    return BatchNormMode(momentum, batch_stats, use_running, counts_batch)
