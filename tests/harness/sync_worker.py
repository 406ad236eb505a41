"""One process of tests/ops/test_sync.py's multi-process runs (gloo on the CPU): trains a
synchronized FusedMixerBlock under DistributedDataParallel on this rank's part of a
batch, and checks every step against the eager block run on the whole batch here."""

import copy
import datetime

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from convmixer_kernels import FusedMixerBlock, convert_sync_batchnorm
from convmixer_kernels.reference import Residual, activation_module

# A collective that waits longer than this raises instead of hanging the test.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


def plain_block(channels, k, act, bn_kwargs, dtype=torch.float64):
    """The eager block in `dtype` with random BatchNorm parameters and running statistics
    (the default seed's draw: call torch.manual_seed first for the same block)."""
    block = Residual(nn.Sequential(nn.Conv2d(channels, channels, k, groups=channels, padding="same"),
                                   activation_module(act), nn.BatchNorm2d(channels, **bn_kwargs))).to(dtype)
    bn = block.fn[2]
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.2)
        if bn.track_running_stats:
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
    return block


# float32 blocks against the float64 eager block: the bounds tests/nn/test_modules.py uses.
_TOLERANCE = {torch.float64: dict(out={}, grad={}),
              torch.float32: dict(out=dict(rtol=1e-4, atol=1e-5), grad=dict(rtol=1e-3, atol=1e-5))}


def check_config(rank, world, sizes, backend="cpu", layout="nchw", bn_kwargs=None, via="convert", steps=2,
                 channels=5, k=3, act="gelu", hw=(6, 7), dtype=torch.float64):
    torch.manual_seed(0)  # the same weights on every rank
    plain = plain_block(channels, k, act, bn_kwargs or {})
    fused = FusedMixerBlock.from_sequential(copy.deepcopy(plain).fn.to(dtype), backend=backend)
    tol = _TOLERANCE[dtype]
    if via == "convert":
        convert_sync_batchnorm(fused)
        # broadcast_buffers=False: equal running statistics on every rank come from the merge.
        model = DistributedDataParallel(fused, broadcast_buffers=False)
    else:
        # The user's own conversion: fn[2] becomes an nn.SyncBatchNorm, here over a group
        # of its own. DDP refuses SyncBatchNorm in CPU modules, so the parameter gradients
        # are averaged by hand as DDP would.
        group = dist.new_group(list(range(world)))
        fused.fn[2] = nn.SyncBatchNorm.convert_sync_batchnorm(fused.fn[2], process_group=group)
        model = fused
        def average(param):
            dist.all_reduce(param.grad)
            param.grad.div_(world)

        for p in fused.parameters():
            p.register_post_accumulate_grad_hook(average)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1)
    # DDP's gradients are the average over the ranks, the plain block's the sum.
    opt_fused = torch.optim.SGD(fused.parameters(), lr=0.1 * world)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    for step in range(steps):
        where = f"rank {rank} step {step}"
        gen = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(sum(sizes), channels, *hw, generator=gen, dtype=torch.float64)
        dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        x_all = x.clone().requires_grad_()
        y_all = plain(x_all)
        y_all.backward(dy)
        x_mine = x[lo:hi].to(dtype).clone().requires_grad_()
        y_mine = model(x_mine)
        # The loss is the sum over every rank of <y, dy>: the input gradient is the
        # whole batch's, and DDP averages the parameter gradients over the ranks.
        y_mine.backward(dy[lo:hi].to(dtype))
        torch.testing.assert_close(y_mine.double(), y_all[lo:hi], **tol["out"], msg=f"{where}: output")
        torch.testing.assert_close(x_mine.grad.double(), x_all.grad[lo:hi], **tol["grad"],
                                   msg=f"{where}: input gradient")
        for (name, p_plain), p_fused in zip(plain.named_parameters(), fused.parameters()):
            torch.testing.assert_close(p_fused.grad.double() * world, p_plain.grad, **tol["grad"],
                                       msg=f"{where}: {name} gradient")
        for (name, b_plain), b_fused in zip(plain.named_buffers(), fused.buffers()):
            torch.testing.assert_close(b_fused.to(b_plain.dtype), b_plain, **tol["out"], msg=f"{where}: {name}")
            gathered = [torch.empty_like(b_fused) for _ in range(world)]
            dist.all_gather(gathered, b_fused)
            assert all(torch.equal(g, gathered[0]) for g in gathered), f"{where}: {name} differs between ranks"
        opt_plain.step(), opt_fused.step(), opt_plain.zero_grad(), opt_fused.zero_grad()


def run(rank, world, init_file, configs):
    torch.set_num_threads(1)  # the ranks share the machine's cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        for config in configs:
            try:
                check_config(rank, world, **config)
            except Exception as exc:
                raise AssertionError(f"config {config}: {exc}") from exc
    finally:
        dist.destroy_process_group()
