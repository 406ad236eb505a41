"""The cuda backend's kernels (csrc/cuda) on a machine without a GPU, under the CPU
emulator (tests/harness/cuda_emulator), beyond the parity sweep that tests/ops/test_parity.py
runs on it: every kernel path against reference.py in float64 with poisoned outputs
(tensor-core and CUDA-core convolutions, cp.async, transposed and element-wise staging,
both tile shapes, the generic k, many items per block), guard bands around every buffer,
NaN/inf placement on the tensor-core path, and bitwise-equal results whatever order the
threads and blocks run in (a missing barrier shows as a difference) and whatever depth the
pipeline has; on a device of 99 KB per block every pass runs on tiles that fit, or the call
is refused by name. The emulator's own fault reports are checked on kernels with known
faults.

What this cannot show: speed, and the tensor cores' own rounding; tests/ops/backends/test_cuda_gpu.py
runs the same kernels on a GPU.
"""

import glob
import os
import re

import pytest
import torch

from tests.harness import cuda_emulator
from tests.harness.parity import Case, check_backend, make_inputs, run_block
from tests.harness.sweep import assert_nonfinite_as_in_reference

# The `emulator` and `emulated` fixtures: tests/ops/conftest.py.
NAME = "cuda_emulated"
OUTPUTS = ("y", "running_mean", "running_var", "dx", "dweight", "dbias", "dgamma", "dbeta")


def check(training, **case):
    check_backend(make_inputs(Case(**case)), NAME, training=training)


# --------------------------------------------------------------------------- every kernel path
#
# 16-bit dtypes with k in {3, 5, 7, 9}: tensor cores (the weight gradient from k = 5), else
# CUDA cores; other k: the generic kernels. (The sweep runs k = 7 in every 16-bit dtype: test_activations_and_dtypes.)
# 32 x 32 tiles of 8 channels need H, W > 16 and enough blocks for two per multiprocessor:
# emulating a GPU of one multiprocessor gets them at small sizes. W (NCHW) or C
# (channels_last) a multiple of the 16-byte vector: 16-byte staging, else element-wise.


@pytest.mark.parametrize("dtype,k", [(torch.bfloat16, k) for k in (3, 5, 9, 4)] + [(torch.float16, 4)],
                         ids=lambda v: str(v)[6:] if isinstance(v, torch.dtype) else str(v))
def test_16bit_paths(emulated, dtype, k):
    for training in (False, True):
        for layout in ("nchw", "channels_last"):
            check(training, n=2, c=19, h=11, w=11, k=k, dtype=dtype, layout=layout)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("k", (3, 7))
@pytest.mark.parametrize("shape", ((2, 24, 32, 32), (1, 12, 20, 27), (3, 16, 16, 16)), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_paths(emulated, emulator, dtype, k, shape, layout):
    emulator.configure(multiprocessors=1)
    n, c, h, w = shape
    for training in (False, True):
        check(training, n=n, c=c, h=h, w=w, k=k, dtype=dtype, layout=layout)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: str(d)[6:])
def test_unaligned_buffers_take_the_elementwise_path(emulated, dtype):
    emulated.misalign = 1  # every activation-sized buffer one element off 16 bytes
    for layout in ("nchw", "channels_last"):
        for training in (False, True):
            check(training, n=1, c=16, h=20, w=24, k=7, dtype=dtype, layout=layout)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("hw,k", ((16, 7), (20, 6)))
def test_many_items_per_block(emulated, emulator, layout, hw, k):
    # one multiprocessor: 16 blocks are the target, so 20 tiles go 2 to a block, and the
    # reductions merge the partials of 10 slices
    emulator.configure(multiprocessors=1)
    for training in (False, True):
        check(training, n=20, c=8, h=hw, w=hw, k=k, dtype=torch.bfloat16, layout=layout)


# The pipeline: with two shared buffers (launch.cuh's pipeline_stages) the next item's copies
# are in flight while a block computes; with one, they follow its last barrier. The depth
# depends on the device's shared memory, the arithmetic does not: an emulated A10 (100 KB per
# multiprocessor) runs one buffer almost everywhere, an H100 (228 KB) two in every pass but
# the dh pass, an A100 (164 KB) one in the grad_out passes and two in the rest, and all three
# must give the same bits, in any thread order. One multiprocessor: 16 blocks are the target,
# so 5 images x 7 channel groups of 8 (35 items at one per block) go 3 to a block, and each
# buffer is filled, read and filled again. W and C are whole 16-byte vectors (cp.async in
# NCHW, the landing buffer and the transposes in channels_last); k = 7 copies 8 bytes at a
# time in 16-bit types and 4 in float32, k = 9 16. (Parity with the reference: the sweep,
# and test_many_items_per_block.)


@pytest.mark.parametrize("dtype,k", ((torch.bfloat16, 7), (torch.float32, 7), (torch.float32, 9)),
                         ids=lambda v: str(v)[6:] if isinstance(v, torch.dtype) else str(v))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_pipeline_depth_and_order_give_the_same_bits(emulated, emulator, dtype, k, layout):
    inputs = make_inputs(Case(n=5, c=56, h=17, w=24, k=k, dtype=dtype, layout=layout))
    runs = [("a10", "ascending", 0), ("h100", "shuffled", 1), ("a100", "descending", 0)]
    if dtype == torch.float32:
        # float32's 32 x 32 dh pass needs 119-129 KB with one buffer, past an A10's 99 KB: its
        # backward takes 16 x 16 tiles there, which sum the weight gradient in another order
        runs = runs[1:]
    results = []
    for device, order, seed in runs:
        emulator.configure(multiprocessors=1, device=device, order=order, seed=seed)
        results.append((device, run_block(inputs, training=True, backend=NAME, grads=True)))
    (first_device, first), rest = results[0], results[1:]
    for device, result in rest:
        for name in OUTPUTS:
            assert torch.equal(result[name], first[name]), f"{name}: {device} differs from {first_device}"


# --------------------------------------------------------------------------- a device of little shared memory
#
# An A10 (sm_86, like sm_89: 100 KB per multiprocessor, 99 KB per block) holds neither
# float32's 32 x 32 dh pass (119-129 KB with one buffer) nor float32's generic k = 31 passes
# (99-121 KB). The planner takes 16 x 16 tiles for the first call; the second has no smaller
# tile, and is refused by name (pass, bytes, limit) before anything launches: by the backend's
# availability (so backend="auto" passes it by) and by the launchers. Never a bare launch
# failure. 32 x 32 inputs of two images on one multiprocessor: 32 x 32 tiles where they fit.

A10_PER_BLOCK = 99 * 1024


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("k", (7, 9, 31))
def test_every_pass_runs_or_is_refused_by_name_on_an_a10(emulated, emulator, dtype, k):
    emulator.configure(multiprocessors=1, device="a10")
    case = Case(n=2, c=8, h=32, w=32, k=k, dtype=dtype)
    why = emulated.why_not_on_device(torch.device("cpu"), dtype, k)
    if dtype == torch.float32 and k == 31:
        refusal = rf"pass needs \d+ bytes of shared memory per block for float32 at k = 31 \(tiles of 16 x 16 x 8 " \
                  rf"channels\), more than the {A10_PER_BLOCK} bytes a block may have on this GPU"
        assert re.fullmatch(r"the training forward's stats " + refusal, why), why
        for training in (False, True):
            with pytest.raises(RuntimeError, match=f"backend 'cuda_emulated' cannot run here: {re.escape(why)}"):
                run_block(make_inputs(case), training=training, backend=NAME, grads=True)
        inp = make_inputs(case)
        with pytest.raises(cuda_emulator.EmulatorError, match=r"^forward_eval: the eval forward's apply " + refusal):
            emulated.forward_eval(inp.x, inp.weight, inp.bias, inp.gamma, inp.beta, inp.running_mean,
                                  inp.running_var, 1e-5, "gelu")
        with pytest.raises(cuda_emulator.EmulatorError, match=r"^backward: the backward's grad_sums " + refusal):
            emulated.backward(inp.grad_out, inp.x, inp.weight, inp.bias, inp.gamma, inp.running_mean,
                              inp.running_var, 1e-5, True, "gelu")
    else:
        assert why is None
        for training in (False, True):
            check_backend(make_inputs(case), NAME, training=training)


def test_auto_passes_by_a_backend_the_device_cannot_run(emulated, emulator, monkeypatch):
    from convmixer_kernels.ops import backends

    monkeypatch.setitem(backends.PRIORITY, "cpu", (NAME, "cpu"))
    emulator.configure(device="a10")
    cpu = torch.device("cpu")
    assert backends.resolve("auto", cpu, torch.float32, kernel_size=31) == "cpu"
    assert backends.resolve("auto", cpu, torch.bfloat16, kernel_size=31) == NAME
    emulator.configure(device="a100")
    assert backends.resolve("auto", cpu, torch.float32, kernel_size=31) == NAME


# --------------------------------------------------------------------------- NaN, inf, races


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_nan_and_inf_land_where_eager_puts_them(emulated, dtype, layout):
    # on the tensor-core path the band's zeros meet the inputs beside each window; such
    # tasks are recomputed exactly
    from convmixer_kernels import mixer_block

    inputs = make_inputs(Case(n=1, c=16, h=32, w=32, k=7, dtype=dtype, layout=layout))
    x = inputs.x.clone()
    x[0, 0, 4, 4] = float("nan")
    x[0, 1, 20, 9] = float("inf")
    x[0, 2, 0, 31] = float("-inf")
    args = (x, inputs.weight, inputs.bias, inputs.gamma, inputs.beta, inputs.running_mean, inputs.running_var)
    y = mixer_block(*args, training=False, backend=NAME)
    assert_nonfinite_as_in_reference(y, args, NAME)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_weight_gradient_nan_and_inf_land_where_eager_puts_them(emulated, emulator, layout):
    # An inf at an image corner reaches only the taps whose window holds it (i, j <= pad):
    # the others are finite in eager. The tensor-core weight gradient multiplies dh's zero
    # margins by the inf too; such tasks are recomputed exactly. ReLU keeps dh finite.
    emulator.configure(multiprocessors=1)  # 32 x 32 tiles: 2 channel groups of 8
    inputs = make_inputs(Case(n=1, c=16, h=32, w=32, k=7, dtype=torch.bfloat16, layout=layout, activation="relu"))
    inputs.x.detach()[0, 3, 0, 0] = float("inf")
    out = run_block(inputs, training=False, backend=NAME, grads=True)["dweight"]
    ref = run_block(inputs.to(dtype=torch.float64), training=False, backend=None, grads=True)["dweight"]
    assert not ref[3].isfinite().all() and ref[3].isfinite().any()
    assert torch.equal(out.isnan(), ref.isnan()), "NaN placement in dweight differs from the reference"
    assert torch.equal(out.isinf(), ref.isinf()), "inf placement in dweight differs from the reference"


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("k,layout", ((7, "nchw"), (7, "channels_last"), (4, "nchw"), (9, "channels_last")))
def test_results_do_not_depend_on_thread_or_block_order(emulated, emulator, dtype, k, layout):
    # Threads run ascending, descending or shuffled between barriers (blocks likewise): a
    # shared-memory read that is missing its barrier reads another value in another order.
    inputs = make_inputs(Case(n=2, c=20, h=17, w=18, k=k, dtype=dtype, layout=layout))
    results = []
    for order, seed in (("ascending", 0), ("descending", 0), ("shuffled", 1), ("shuffled", 2)):
        emulator.configure(multiprocessors=2, order=order, seed=seed)
        results.append((order, run_block(inputs, training=True, backend=NAME, grads=True)))
    first_order, first = results[0]
    for order, result in results[1:]:
        for name in OUTPUTS:
            assert torch.equal(result[name], first[name]), f"{name}: {order} order differs from {first_order}"


def test_kernels_declare_no_static_shared_memory():
    # The emulator gives each block one dynamic shared array (`extern __shared__`); any
    # other __shared__ variable would silently become a per-thread local under it.
    for path in glob.glob(os.path.join(cuda_emulator.CSRC, "cuda", "*")):
        with open(path) as f:
            for number, line in enumerate(f, 1):
                code = line.split("//")[0]
                if "__shared__" in code:
                    assert re.search(r"\bextern\s+__shared__", code), f"{path}:{number}: {line.strip()}"


# --------------------------------------------------------------------------- the emulator's own checks


def test_missing_barrier_shows_as_an_order_dependence(emulator):
    expected = [(3 * ((t + 1) % 256) + 1) for t in range(256)]
    for order in ("ascending", "descending", "shuffled"):
        emulator.configure(order=order, seed=3)
        assert emulator.selftest("neighbour_read_with_barrier").tolist() == expected
    emulator.configure(order="ascending")
    ascending = emulator.selftest("neighbour_read")
    emulator.configure(order="descending")
    descending = emulator.selftest("neighbour_read")
    assert not torch.equal(ascending, descending)
    assert (ascending == -1).any()  # shared memory starts as 0xff bytes


def test_warp_shuffles(emulator):
    assert emulator.selftest("warp_sums").tolist() == [sum(range(32 * (t // 32), 32 * (t // 32 + 1))) for t in range(256)]


def test_cp_async_copies_arrive_at_the_wait_with_their_zero_fill(emulator):
    # thread t copies 4 (t % 4) words of source[4t, 4t + 4) (all 4 where t % 4 = 0), the rest
    # zero-filled, and reads its neighbour's 4 after the wait and a barrier
    source = [5 * i + 2 for i in range(4 * 256)]

    def copied(u):
        n = u % 4 or 4
        return sum(source[4 * u: 4 * u + n])

    for order in ("ascending", "descending", "shuffled"):
        emulator.configure(order=order, seed=5)
        assert emulator.selftest("cp_async_copy").tolist() == [copied((t + 1) % 256) for t in range(256)]


@pytest.mark.parametrize("kernel,message", [
    ("divergent_barrier", r"__syncthreads at .*selftest.cpp:\d+ while other threads of the block wait at "
                          r"__syncthreads at .*selftest.cpp:\d+"),
    ("early_exit", r"deadlock .*reached by 255 of 256 threads \(1 exited\)"),
    ("shared_overflow", r"wrote past the end of its 1024 bytes of dynamic shared memory"),
    ("partial_mask", r"full-warp collectives only"),
    ("big_smem", r"65536 bytes of dynamic shared memory, the kernel may use 49152"),
    # wait_group 1 after two groups: the first group's copy has arrived, the second's not
    ("cp_async_read_before_wait", r"shared-memory read at .*selftest.cpp:\d+ of shared-memory byte 4096, the "
                                  r"destination of a cp.async of thread 0 \(issued at .*selftest.cpp:\d+\) not yet "
                                  r"waited for"),
    ("cp_async_outside", r"cp.async at .*selftest.cpp:\d+ to 16 bytes at .* outside the block's 1024 bytes of "
                         r"shared memory"),
    ("cp_async_never_waited", r"thread 0 ended with cp.async copies it never waited for \(the first issued at "
                              r".*selftest.cpp:\d+\)"),
])
def test_faults_are_reported(emulator, kernel, message):
    emulator.configure()
    with pytest.raises(cuda_emulator.EmulatorError, match=message):
        emulator.selftest(kernel)
    assert emulator.selftest("big_smem_with_attribute").tolist() == [0] * 256  # and the next call runs
