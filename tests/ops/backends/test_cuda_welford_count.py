"""Welford counts past 2^24 values per channel, where a float count stops growing:
the emulated CUDA merge over slices (csrc/cuda/reduce.cu, fed partials directly: a whole
forward of that size is too slow on the emulator) and the CPU backend end to end."""

import pytest
import torch

import convmixer_kernels

BIG = 2 ** 24  # the last count a float holds exactly while adding ones


def _chan(counts, means, m2s):
    """Chan's merge in float64 with exact integer counts."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in zip(counts, means, m2s):
        nn = n + nb
        d = mb - mean
        mean += d * nb / nn
        m2 += m2b + d * d * n * nb / nn
        n = nn
    return mean, m2 / n


def test_cuda_merge_over_slices_counts_past_2_24(emulator):
    # channel 0: 2^24 values of variance 1 around 0, then 4096 slices of one value at 0:
    # only the count moves the variance (2^24 / (2^24 + 4096)). Channel 1: the same counts,
    # the single values at 1, so the mean moves by 1 / (count so far) per slice. A float
    # count would stay at 2^24: variance 1.0 and a mean 2.4e-4 too large, relatively.
    extra = 4096
    counts = [BIG] + [1] * extra
    partial = torch.zeros(1 + extra, 3, 2, dtype=torch.float64)
    partial[:, 0, :] = torch.tensor(counts, dtype=torch.float64)[:, None]
    partial[0, 2, 0] = BIG  # M2 of the big slice, channel 0
    partial[1:, 1, 1] = 1.0  # the single values of channel 1
    mean, var = emulator.welford_finalize(partial)
    for c in range(2):
        ref_mean, ref_var = _chan(counts, partial[:, 1, c].tolist(), partial[:, 2, c].tolist())
        assert float(var[c]) == pytest.approx(ref_var, rel=1e-6, abs=1e-12), (c, float(var[c]), ref_var)
        assert float(mean[c]) == pytest.approx(ref_mean, rel=1e-5, abs=1e-12), (c, float(mean[c]), ref_mean)


def test_cpu_batch_statistics_past_2_24():
    # N * H * W = 257 * 256 * 256 = 2^24 + 2^16 values of one channel; momentum 1 makes the
    # running statistics the batch mean and unbiased variance
    torch.manual_seed(0)
    x = torch.randn(257, 1, 256, 256) * 0.5 + 2.0
    w, b = torch.randn(1, 1, 1, 1) + 1.0, torch.randn(1)
    rm, rv = torch.zeros(1), torch.ones(1)
    convmixer_kernels.mixer_block(x, w, b, torch.ones(1), torch.zeros(1), rm, rv, training=True, momentum=1.0,
                                  activation="relu", backend="cpu")
    a = torch.relu(x.double() * w.double().flatten() + b.double())
    count = a.numel()
    assert count > BIG
    assert float(rm) == pytest.approx(float(a.mean()), rel=1e-6)
    assert float(rv) == pytest.approx(float(a.var(unbiased=True)), rel=1e-5)
    # the count itself: a variance off by a count of 2^24 instead of 2^24 + 2^16 is 0.4% off
    assert abs(float(rv) / float(a.var(unbiased=True)) - 1) < 1e-4
