"""The `cuda` backend (csrc/cuda) on a GPU: the parity sweep of the CPU backends against
reference.py in float64 with poisoned outputs, every kernel path (tensor-core and
CUDA-core, 16-byte and element-wise staging, both tile shapes, the generic k, many items
per block, the tiles that fit the GPU's shared memory), agreement with the triton
backend, run-to-run determinism, NaN/inf, CUDA graph capture, compute-sanitizer memcheck
and racecheck, and the per-shape "auto" choice.

Marked `gpu`; skipped without a CUDA GPU or without the CUDA kernels in the extension.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.harness.parity import ATOL, GPU_QUICK, Case, check_backend, make_inputs, rel_err, run_block
from tests.harness.sweep import assert_nonfinite_as_in_reference
from tests.harness import ROOT

pytestmark = pytest.mark.gpu


def _why_skip():
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    from convmixer_kernels import _extension

    return _extension.cuda_missing_reason()


_SKIP = _why_skip()
if _SKIP:
    pytestmark = [pytest.mark.gpu, pytest.mark.skip(reason=_SKIP)]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check(case, training, **kwargs):
    return check_backend(make_inputs(Case(**{**case, "device": "cuda"})), "cuda", training=training, **kwargs)


# The sweep every backend runs is tests/ops/test_parity.py (its cuda param); here the
# cuda kernels' own paths.


# --------------------------------------------------------------------------- every kernel path
#
# W a multiple of 8 (NCHW) or C a multiple of 8 (channels_last): 16-byte staging, else
# element-wise; 16-bit dtypes with k in {3, 5, 7, 9}: tensor cores, else CUDA cores; other
# k: generic. 32 x 32 tiles of 8 channels where H, W > 16 and they give every
# multiprocessor two blocks (the first and third shapes), else 16 x 16 tiles of 16.


def _path_in_quick_pass(shape, k, dtype):
    # every dtype and k on the narrow tiles; the wide tiles (the ConvMixer shapes' config)
    # at the published k and the generic one in bf16 and f32; ragged edges in bf16
    if shape == (3, 36, 16, 16):
        return True
    if shape == (8, 272, 32, 32):
        return k in (7, 9, 4) and dtype in (torch.bfloat16, torch.float32)
    return dtype == torch.bfloat16 and (shape, k) in (((6, 264, 33, 45), 9), ((1, 64, 20, 56), 7))


PATH_CASES = [
    pytest.param(shape, k, dtype, marks=[GPU_QUICK] if _path_in_quick_pass(shape, k, dtype) else [],
                 id=f"{'x'.join(map(str, shape))}-{k}-{str(dtype)[6:]}")
    for shape in ((8, 272, 32, 32), (3, 36, 16, 16), (6, 264, 33, 45), (1, 64, 20, 56))
    for k in (3, 5, 7, 9, 4)
    for dtype in DTYPES
]


@pytest.mark.parametrize("shape,k,dtype", PATH_CASES)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_paths(shape, k, dtype, layout):
    n, c, h, w = shape
    for training in (False, True):
        check(dict(n=n, c=c, h=h, w=w, k=k, dtype=dtype, layout=layout), training)


@GPU_QUICK
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: str(d)[6:])
def test_unaligned_pointer_takes_the_elementwise_path(dtype):
    # a dense view one element into its buffer: 16-byte accesses would be misaligned
    from convmixer_kernels import mixer_block
    from convmixer_kernels.reference import mixer_block_reference

    inputs = make_inputs(Case(n=2, c=16, h=32, w=32, k=7, dtype=dtype, device="cuda"))
    buf = torch.empty(inputs.x.numel() + 1, dtype=dtype, device="cuda")
    x = buf[1:].view(inputs.x.shape)
    x.copy_(inputs.x)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    rest = (inputs.weight, inputs.bias, inputs.gamma, inputs.beta, inputs.running_mean, inputs.running_var)
    for training in (False, True):
        y = mixer_block(x, *(t.clone() for t in rest), training=training, backend="cuda")
        eager = mixer_block_reference(x, *(t.clone() for t in rest), training=training)
        ref = mixer_block_reference(x.double().cpu(), *(t.double().cpu() for t in rest), training=training)
        assert rel_err(y, ref) <= 2 * rel_err(eager, ref) + ATOL[dtype]


@GPU_QUICK
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("hw", (32, 16))
def test_many_items_per_block(layout, hw):
    # large batch, few channels: each block walks several tiles and the reductions merge
    # partials of many slices
    inputs = make_inputs(Case(n=2048, c=32, h=hw, w=hw, k=7, dtype=torch.bfloat16, layout=layout, device="cuda"))
    for training in (False, True):
        out = run_block(inputs, training=training, backend="cuda", grads=training)
        x32 = inputs.to(dtype=torch.float32)
        ref = run_block(x32, training=training, backend="eager", grads=training)
        for name in ("y", "running_mean", "running_var") + (("dx", "dweight", "dgamma", "dbeta") if training else ()):
            if ref[name] is not None:
                assert rel_err(out[name], ref[name]) < 2e-2, name


@GPU_QUICK
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("k", (7, 9, 31))
def test_every_pass_runs_or_the_backend_says_which_does_not_fit(dtype, k):
    # launch.cuh's planner takes tiles whose passes fit this GPU's shared memory (16 x 16 for
    # float32's backward on sm_86/sm_89), or the backend names the pass that cannot (float32
    # at k = 31 there): never a bare launch failure
    from convmixer_kernels.ops import backends

    why = backends.why_unavailable("cuda", torch.device("cuda"), dtype, kernel_size=k)
    case = dict(n=2, c=16, h=32, w=32, k=k, dtype=dtype)
    if why is None:
        for training in (False, True):
            check(case, training)
    else:
        assert dtype == torch.float32 and k == 31, why
        assert re.search(r"pass needs \d+ bytes of shared memory per block .* more than the \d+ bytes", why), why
        with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
            run_block(make_inputs(Case(**case, device="cuda")), training=True, backend="cuda", grads=True)


# --------------------------------------------------------------------------- agreement, determinism, NaN


@pytest.mark.parametrize("k,dtype", [
    pytest.param(k, dtype, id=f"{k}-{str(dtype)[6:]}",
                 marks=[GPU_QUICK] if dtype == torch.bfloat16 and k in (7, 9) else [])
    for k in (3, 7, 9, 8) for dtype in DTYPES])
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_cuda_and_triton_agree(dtype, layout, k):
    from convmixer_kernels import available_backends

    if "triton" not in available_backends("cuda", dtype):
        pytest.skip("triton backend unavailable")
    inputs = make_inputs(Case(n=2, c=24, h=32, w=32, k=k, dtype=dtype, layout=layout, device="cuda"))
    for training in (False, True):
        a = run_block(inputs, training=training, backend="cuda", grads=True)
        b = run_block(inputs, training=training, backend="triton", grads=True)
        eager = run_block(inputs, training=training, backend=None, grads=True)
        ref = run_block(inputs.to(dtype=torch.float64, device="cpu"), training=training, backend=None, grads=True)
        for name in ("y", "dx", "dweight", "dbias", "dgamma", "dbeta"):
            bound = 2 * (2 * rel_err(eager[name], ref[name]) + ATOL[dtype])
            assert rel_err(a[name], b[name]) <= bound, f"{name}: cuda and triton differ ({dtype}, {layout}, k={k})"


@GPU_QUICK
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("k", (7, 4))
def test_deterministic(dtype, k):
    inputs = make_inputs(Case(n=4, c=24, h=20, w=36, k=k, dtype=dtype, device="cuda"))
    first = run_block(inputs, training=True, backend="cuda", grads=True)
    second = run_block(inputs, training=True, backend="cuda", grads=True)
    for name in ("y", "running_mean", "running_var", "dx", "dweight", "dbias", "dgamma", "dbeta"):
        assert torch.equal(first[name], second[name]), f"{name} differs between two runs"


@GPU_QUICK
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_nan_and_inf_propagate_as_in_eager(dtype, layout):
    # On the tensor-core path the band's zeros meet the inputs beside each window; the
    # kernels recompute such tiles exactly, so NaN and inf land where eager puts them.
    from convmixer_kernels import mixer_block

    inputs = make_inputs(Case(n=1, c=16, h=32, w=32, k=7, dtype=dtype, layout=layout, device="cuda"))
    x = inputs.x.clone()
    x[0, 0, 4, 4] = float("nan")
    x[0, 1, 20, 9] = float("inf")
    x[0, 2, 0, 31] = float("-inf")
    args = (x, inputs.weight, inputs.bias, inputs.gamma, inputs.beta, inputs.running_mean, inputs.running_var)
    y = mixer_block(*args, training=False, backend="cuda")
    assert_nonfinite_as_in_reference(y, args, "cuda")


@GPU_QUICK
def test_cuda_graph_capture():
    from convmixer_kernels import mixer_block

    inputs = make_inputs(Case(n=2, c=32, h=32, w=32, k=7, dtype=torch.bfloat16, device="cuda"))
    args = list(inputs.tensors())
    for training in (False, True):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up outside the graph
                mixer_block(*args, training=training, backend="cuda")
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = mixer_block(*args, training=training, backend="cuda")
        graph.replay()
        torch.cuda.synchronize()
        expected = mixer_block(*[t.clone() if t is not None else None for t in args], training=training,
                               backend="cuda")
        assert torch.equal(y, expected)


# --------------------------------------------------------------------------- compute-sanitizer

# The same run gpu_check.sh sanitizes: every kind of kernel, the wide 32x32 tile included.
_SANITIZER_SCRIPT = os.path.join(ROOT, "scripts",
                                 "gpu_sanitize.py")


def _sanitizer():
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
            candidate = os.path.join(root, "bin", "compute-sanitizer") if root else None
            if candidate and os.path.exists(candidate):
                return candidate
    return exe


@pytest.mark.parametrize("tool", ("memcheck", "racecheck", "synccheck"))
def test_compute_sanitizer(tool):
    exe = _sanitizer()
    if exe is None:
        pytest.skip("compute-sanitizer not found")
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # let memcheck see each allocation's bounds
    cmd = [exe, "--tool", tool, "--error-exitcode", "99", sys.executable, _SANITIZER_SCRIPT]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "sanitizer script done" in output, output[-6000:]


# --------------------------------------------------------------------------- backend="auto"


def test_auto_times_and_caches():
    from convmixer_kernels import available_backends, explain_auto
    from convmixer_kernels.ops import auto_select

    if "triton" not in available_backends("cuda", torch.bfloat16):
        pytest.skip("triton backend unavailable: auto has one contender")
    shape = (16, 64, 32, 32)
    text = explain_auto(shape, 7, dtype=torch.bfloat16, device="cuda", measure=True)
    assert "auto picks" in text and ("'cuda'" in text or "'triton'" in text), text
    decisions = auto_select.auto_decisions()
    assert len(decisions) >= 1 and all(d.backend in ("cuda", "triton") for d in decisions.values())
    again = explain_auto(shape, 7, dtype=torch.bfloat16, device="cuda")
    assert again == text  # cached: no second timing
