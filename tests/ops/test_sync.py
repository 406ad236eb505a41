"""Synchronized BatchNorm statistics (ops/sync.py, docs/design.md "Synchronized statistics").

- no process group, or a group of one process: exactly the unsynchronized block;
- each backend's pieces (statistics pass, apply pass with given statistics, the
  backward's sum pass and its apply passes with given sums), run through the synced
  path on a one-process group, against reference.py in float64 (tests/harness/parity.py);
- 2 and 3 processes over gloo on the CPU under DistributedDataParallel: outputs, input
  gradients, averaged parameter gradients and running statistics against the eager
  block on the whole batch (tests/harness/sync_worker.py), uneven batches, a batch of one, an
  empty batch, affine=False, momentum=None, both ways in (convert_sync_batchnorm and a
  user's nn.SyncBatchNorm);
- the cuda backend, whose launchers fuse the passes, is refused by name and skipped by
  "auto" for synchronized calls.
"""

import copy
import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.harness import sync_worker
from tests.harness.parity import Case, check_backend, make_inputs
from tests.harness.sweep import OPTIONAL_PARAMETERS
from tests.harness.cpu_levels import RUNNABLE, cpu_level

import convmixer_kernels as cmk
from convmixer_kernels.ops import backends
from convmixer_kernels.ops import sync as sync_ops

# Bounds a hung run: the collectives time out after sync_worker.COLLECTIVE_TIMEOUT, and
# the processes are killed after this.
RUN_TIMEOUT_S = 180


def _block_pair(backend="cpu"):
    torch.manual_seed(0)
    block = cmk.FusedMixerBlock(6, 3, backend=backend).double().train()
    with torch.no_grad():
        block.fn[2].running_mean.normal_(0, 0.3)
    return block, copy.deepcopy(block)


def _assert_bitwise_same_training(plain, synced):
    x = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    xp, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    yp, ys = plain(xp), synced(xs)
    assert torch.equal(ys, yp)
    dy = torch.randn_like(yp)
    yp.backward(dy), ys.backward(dy)
    assert torch.equal(xs.grad, xp.grad)
    for p, s in zip(plain.parameters(), synced.parameters()):
        assert torch.equal(s.grad, p.grad)
    for p, s in zip(plain.buffers(), synced.buffers()):
        assert torch.equal(s, p)


def test_without_a_process_group_the_block_is_unsynchronized():
    assert not dist.is_initialized()
    plain, synced = _block_pair()
    assert cmk.convert_sync_batchnorm(synced) is synced and synced.sync_stats
    _assert_bitwise_same_training(plain, synced)


@pytest.fixture(scope="module")
def one_process_group(tmp_path_factory):
    init = tmp_path_factory.mktemp("process_group") / "init"
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1,
                            timeout=sync_worker.COLLECTIVE_TIMEOUT)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_a_group_of_one_process_is_the_unsynchronized_block(one_process_group):
    plain, synced = _block_pair()
    cmk.convert_sync_batchnorm(synced)
    _assert_bitwise_same_training(plain, synced)
    plain, synced = _block_pair()
    synced.fn[2] = nn.SyncBatchNorm.convert_sync_batchnorm(synced.fn[2])
    _assert_bitwise_same_training(plain, synced)


@pytest.fixture
def every_training_call_synced(one_process_group, monkeypatch):
    """Sends every training call through ops/sync.py's path, collectives included, on the
    one-process group, so the parity harness checks each backend's pieces."""
    calls = []

    def sync_group(sync, process_group, training):
        calls.append(training)
        return one_process_group if training else None

    monkeypatch.setattr(sync_ops, "sync_group", sync_group)
    return calls


_PIECE_CASES = [
    ("cpu", Case(n=3, c=5, h=7, w=9, k=3)),
    ("cpu", Case(n=2, c=19, h=13, w=13, k=7, layout="channels_last")),
    ("cpu", Case(n=2, c=4, h=9, w=7, k=8, layout="sliced", activation="relu")),
    ("cpu", Case(n=1, c=3, h=7, w=7, k=2, dtype=torch.float64, activation="silu")),
    ("cpu", Case(n=2, c=6, h=7, w=5, k=3, dtype=torch.bfloat16, layout="channels_last")),
    ("cpu", Case(n=2, c=5, h=6, w=6, k=5, dtype=torch.float16)),
    *(("cpu", Case(n=2, c=5, h=7, w=7, k=3, bias=b, affine=a, running=r)) for b, a, r in OPTIONAL_PARAMETERS),
    ("eager", Case(n=2, c=5, h=7, w=9, k=3, layout="channels_last")),
    ("eager", Case(n=2, c=3, h=5, w=5, k=4, dtype=torch.float64, bias=False, affine=False)),
    ("triton", Case(n=2, c=3, h=7, w=9, k=3)),
    ("triton", Case(n=2, c=5, h=5, w=7, k=3, layout="channels_last", affine=False)),
]


@pytest.mark.parametrize("backend,case", _PIECE_CASES, ids=[f"{b}-{c}" for b, c in _PIECE_CASES])
def test_synchronized_pieces_match_the_reference(backend, case, every_training_call_synced):
    if backends.why_unavailable(backend, torch.device("cpu"), case.dtype, synced=True) is not None:
        pytest.skip(backends.why_unavailable(backend, torch.device("cpu"), case.dtype, synced=True))
    check_backend(make_inputs(case), backend, training=True)
    assert every_training_call_synced and all(every_training_call_synced)


@pytest.mark.parametrize("level", RUNNABLE)
@pytest.mark.parametrize("case", [Case(n=2, c=19, h=7, w=9, k=3, layout="channels_last"),
                                  Case(n=2, c=3, h=9, w=11, k=5, dtype=torch.float64)], ids=str)
def test_synchronized_cpu_pieces_at_every_cpu_level(level, case, every_training_call_synced):
    # The pieces are flags of the kernels compiled once per instruction-set level.
    with cpu_level(level):
        check_backend(make_inputs(case), "cpu", training=True)


def test_cuda_backend_is_refused_by_name_and_skipped_by_auto(monkeypatch):
    # As if a GPU and both GPU backends were there.
    monkeypatch.setattr(backends.get_backend("cuda"), "why_unavailable", lambda device, dtype: None)
    monkeypatch.setattr(backends.get_backend("triton"), "why_unavailable", lambda device, dtype: None)
    cuda = torch.device("cuda")
    assert backends.resolve("auto", cuda, torch.float32, None, synced=True) == "triton"
    assert backends.resolve("auto", cuda, torch.float32, None, synced=False) == "cuda"
    assert backends.resolve("cuda", cuda, torch.float32, None, synced=False) == "cuda"
    with pytest.raises(RuntimeError, match=r"backend 'cuda' cannot run here: .*cannot synchronize BatchNorm "
                                           r"statistics.*use backend='triton'"):
        backends.resolve("cuda", cuda, torch.float32, None, synced=True)


def test_merge_statistics_is_chans_formula_with_empty_parts():
    values = [torch.randn(n, 4, dtype=torch.float64) for n in (3, 0, 5, 1)]
    rows = []
    for v in values:
        mean = v.mean(0) if len(v) else torch.zeros(4, dtype=torch.float64)
        rows.append(torch.stack([torch.full((4,), float(len(v)), dtype=torch.float64), mean,
                                 ((v - mean) ** 2).sum(0)]))
    count, mean, m2 = sync_ops.merge_statistics(torch.stack(rows))
    whole = torch.cat(values)
    assert torch.equal(count, torch.full((4,), 9.0, dtype=torch.float64))
    torch.testing.assert_close(mean, whole.mean(0), rtol=0, atol=1e-14)
    torch.testing.assert_close(m2 / 9, whole.var(0, correction=0), rtol=0, atol=1e-14)


def _spawn(world, configs, tmp_path):
    context = mp.start_processes(sync_worker.run, args=(world, str(tmp_path / "init"), configs), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"{world} processes did not finish within {RUN_TIMEOUT_S} s")


def test_two_processes(tmp_path):
    _spawn(2, [
        dict(sizes=(3, 2)),
        dict(sizes=(2, 3), layout="channels_last", via="syncbn", backend="eager", act="relu"),
        dict(sizes=(0, 3), k=4),  # a rank with an empty batch
        dict(sizes=(1, 2), backend="triton", channels=3, hw=(5, 6), steps=1, dtype=torch.float32),
        dict(sizes=(2, 1), layout="channels_last", dtype=torch.float32),
    ], tmp_path)


def test_three_processes(tmp_path):
    _spawn(3, [
        dict(sizes=(4, 1, 2), bn_kwargs={"affine": False, "momentum": None}, steps=3),
        dict(sizes=(2, 2, 3), bn_kwargs={"track_running_stats": False}, layout="channels_last", k=5),
    ], tmp_path)
