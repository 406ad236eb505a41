"""The CPU kernels at every instruction-set level this machine runs: each level is compiled
into the extension (setup.py CPU_LEVELS) and passes the parity sweep, the level chosen by
default is the best one the CPU supports, and a forced level is honoured or refused with
a clear error.

The float64 cases are the regression test of a miscompile: built with -march=native on a
Sapphire Rapids Xeon, GCC 12.2 tuned the bindings for rocketlake and emitted a `cmov`
that read the flags of `cmp $7` (x is float64) after an `add` had overwritten them, so
the accumulation dtype came out float32 and every float64 call failed with
"bn_weight must be Float, got Double". The bindings now get no ISA or tuning flags.
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import convmixer_kernels as cmk
from convmixer_kernels import _extension
from tests.harness import ROOT
from tests.harness.cpu_levels import RUNNABLE, cpu_level
from tests.harness.parity import Case, check_backend, make_inputs, run_block

pytestmark = pytest.mark.skipif(_extension.load() is None, reason="the compiled extension did not load")


def _child_env(level=None):
    """The environment of a child Python: it imports this checkout (not whatever an earlier
    install left on its path), at the given CPU level or at the one it detects."""
    env = {k: v for k, v in os.environ.items() if k != "CONVMIXER_KERNELS_CPU_CAPABILITY"}
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    if level is not None:
        env["CONVMIXER_KERNELS_CPU_CAPABILITY"] = level
    return env

def test_default_level_is_the_best_this_cpu_runs():
    levels = cmk.cpu_capabilities()
    assert "baseline" in levels and levels["baseline"]
    assert list(levels)[-1] == "baseline"
    if os.environ.get("CONVMIXER_KERNELS_CPU_CAPABILITY"):
        pytest.skip("the level is forced by CONVMIXER_KERNELS_CPU_CAPABILITY")
    assert cmk.cpu_capability() == RUNNABLE[0]


def test_x86_builds_have_the_vector_levels():
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        pytest.skip("the vector levels are x86-64 only")
    assert {"baseline", "avx2", "avx512"} <= set(cmk.cpu_capabilities())


@pytest.mark.parametrize("bad", ("avx9", "", "AVX2"))
def test_unknown_level_is_refused_with_the_compiled_names(bad):
    with pytest.raises(RuntimeError, match=r"must be one of the compiled levels \(.*baseline\)"):
        _extension.load()._set_cpu_capability(bad)


def test_forced_level_from_the_environment():
    code = "import convmixer_kernels as c; print(c.cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env=_child_env("baseline"), capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "baseline"
    out = subprocess.run([sys.executable, "-c", code], env=_child_env("no_such_level"), capture_output=True, text=True)
    assert out.returncode != 0 and "CPU capability must be one of the compiled levels" in out.stderr


@pytest.mark.parametrize("level", RUNNABLE)
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
def test_float64_inputs_reach_the_kernels(level, training):
    # The miscompile's reproduction: every tensor float64, straight to the kernel op.
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w, b = torch.randn(4, 1, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    g = torch.randn(4, dtype=torch.float64)
    with cpu_level(level):
        if training:
            y, mean, var = torch.ops.convmixer_kernels._kernel_forward_train(x, w, b, g, g, 1e-5, "gelu")
            assert mean.dtype == var.dtype == torch.float64
        else:
            y = torch.ops.convmixer_kernels._kernel_forward_eval(x, w, b, g, g, g, g.abs(), 1e-5, "gelu")
    assert y.dtype == torch.float64 and y.isfinite().all()
    # The check itself still works: float32 BN vectors with float64 x are refused.
    with pytest.raises(RuntimeError, match="bn_weight must be Double, got Float"):
        torch.ops.convmixer_kernels._kernel_forward_train(x, w, b, g.float(), g, 1e-5, "gelu")


# A sweep per level: the kernel sizes with unrolled (3, 7, 9) and generic (1, 2, 8) code,
# both layouts and a sliced input, every dtype, and two activations.
@pytest.mark.parametrize("level", RUNNABLE)
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("k", (1, 2, 3, 7, 8, 9))
def test_parity_at_every_level(level, training, k):
    with cpu_level(level):
        for layout in ("nchw", "channels_last", "sliced"):
            check_backend(make_inputs(Case(n=2, c=17, h=13, w=13, k=k, layout=layout)), "cpu", training=training)


@pytest.mark.parametrize("level", RUNNABLE)
@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("activation", ("gelu", "silu"))
def test_dtypes_at_every_level(level, dtype, activation):
    with cpu_level(level):
        for training in (False, True):
            for layout in ("nchw", "channels_last"):
                case = Case(n=2, c=19, h=11, w=11, k=7, dtype=dtype, layout=layout, activation=activation)
                check_backend(make_inputs(case), "cpu", training=training)


def test_channels_last_is_bitwise_equal_with_and_without_avx512():
    # channels_last vectorizes over channels, so a wider vector changes no channel's
    # arithmetic: AVX2 and AVX-512 (both with FMA) must agree to the bit. NCHW vectorizes
    # along W with the vector width in its blocking, and the baseline level has no FMA, so
    # those differ by rounding and are held to the parity bounds above instead.
    if not {"avx2", "avx512"} <= set(RUNNABLE):
        pytest.skip("needs a CPU that runs both the avx2 and the avx512 level")
    for dtype in (torch.float32, torch.bfloat16):
        inputs = make_inputs(Case(n=2, c=37, h=13, w=13, k=7, dtype=dtype, layout="channels_last"))
        for training in (False, True):
            results = []
            for level in ("avx2", "avx512"):
                with cpu_level(level):
                    results.append(run_block(inputs, training=training, backend="cpu", grads=True))
            for name, value in results[0].items():
                if value is not None:
                    assert torch.equal(value, results[1][name]), f"{name} ({dtype}, training={training})"



@pytest.mark.parametrize("activation", ("gelu", "gelu_tanh"))
def test_gelu_tables_agree_between_avx2_and_avx512_in_every_interval(activation):
    # The float GELUs read 32-interval tables: a two-register permute on AVX-512, four
    # permutes and three blends on AVX2 (activations.h). With k = 1 and a unit weight, h = x
    # runs through every interval, its edges (-6 + 0.375 i) and past +-6, where random inputs
    # rarely go; the forward (Cdf table) and the input gradient (Pdf table) must agree to the
    # bit. channels_last, so the vector width changes nothing else.
    if not {"avx2", "avx512"} <= set(RUNNABLE):
        pytest.skip("needs a CPU that runs both the avx2 and the avx512 level")
    edges = torch.arange(-17, 18, dtype=torch.float64) * 0.375
    values = torch.cat([torch.linspace(-8, 8, 4001, dtype=torch.float64), edges, edges.nextafter(edges + 1),
                        edges.nextafter(edges - 1)]).float()
    c, hw = 16, 16
    n = -(-values.numel() // (c * hw * hw))
    x = torch.cat([values, values[: n * c * hw * hw - values.numel()]]).reshape(n, c, hw, hw)
    inputs = make_inputs(Case(n=n, c=c, h=hw, w=hw, k=1, activation=activation, layout="channels_last"))
    inputs.x = x.contiguous(memory_format=torch.channels_last)
    inputs.weight = torch.ones_like(inputs.weight)
    inputs.bias = torch.zeros_like(inputs.bias)
    inputs.grad_out = torch.randn(x.shape).contiguous(memory_format=torch.channels_last)
    results = []
    for level in ("avx2", "avx512"):
        with cpu_level(level):
            results.append(run_block(inputs, training=False, backend="cpu", grads=True))
    for name in ("y", "dx"):
        assert torch.equal(results[0][name], results[1][name]), name

# The portability check: the whole extension, built on this machine, loads and computes
# on an older CPU emulated by qemu's user mode, at the level that CPU supports. A stray
# AVX-512 (or AVX) instruction outside the dispatched kernels, an inline function of one
# level linked into another, or a feature test that is too generous ends in SIGILL here.
_OLD_CPU_SCRIPT = """
import torch, convmixer_kernels as cmk
from convmixer_kernels.reference import mixer_block_reference
print("level", cmk.cpu_capability())
torch.manual_seed(0)
x, w, b = torch.randn(2, 8, 9, 9), torch.randn(8, 1, 7, 7) / 7, torch.randn(8)
g, beta, rm, rv = torch.rand(8) + 0.5, torch.randn(8), torch.randn(8) * 0.1, torch.rand(8) + 0.5
for training in (False, True):
    y = cmk.mixer_block(x, w, b, g, beta, rm.clone(), rv.clone(), training=training, backend="cpu")
    ref = mixer_block_reference(*(t.double() for t in (x, w, b, g, beta, rm, rv)), training=training)
    print("error", training, ((y.double() - ref).abs().max() / ref.abs().max()).item())
"""


@pytest.mark.parametrize("cpu,level", (("Nehalem", "baseline"), ("Haswell", "avx2")))
def test_runs_on_an_older_cpu_under_qemu(cpu, level, tmp_path):
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or os.uname().machine != "x86_64":
        pytest.skip("needs qemu-user (apt-get install qemu-user; .ci/run installs it)")
    script = tmp_path / "old_cpu.py"
    script.write_text(_OLD_CPU_SCRIPT)
    python = os.path.realpath(sys.executable)  # qemu runs binaries, not launcher scripts
    out = subprocess.run([qemu, "-cpu", cpu, python, str(script)], capture_output=True, text=True, env=_child_env(),
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert f"level {level}" in lines, out.stdout
    errors = [float(line.split()[-1]) for line in lines if line.startswith("error")]
    assert len(errors) == 2 and max(errors) < 1e-5, out.stdout


@pytest.mark.parametrize("level", RUNNABLE)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("k", (7, 8))
def test_bf16_nan_and_inf_land_where_eager_puts_them(level, layout, k):
    # Non-finite inputs next to the windows' edges, at every level: no level may turn a
    # zero tap times an inf beyond a window into a NaN that eager does not produce.
    from convmixer_kernels.reference import mixer_block_reference

    inputs = make_inputs(Case(n=1, c=20, h=12, w=21, k=k, dtype=torch.bfloat16, layout=layout, activation="relu"))
    x = inputs.x.clone()
    x[0, 0, 5, 20] = float("inf")  # the last column: just past the windows of columns < 20 - k // 2
    x[0, 3, 6, 10] = float("-inf")
    x[0, 17, 0, 0] = float("nan")
    args = (x, inputs.weight, inputs.bias, inputs.gamma, inputs.beta, inputs.running_mean, inputs.running_var)
    ref = mixer_block_reference(*args, training=False, activation="relu")
    with cpu_level(level):
        y = cmk.mixer_block(*args, training=False, activation="relu", backend="cpu")
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())


# The amx level's bf16 eval runs on AMX tiles (csrc/cpu/amx_conv.h): every path of its
# blocking -- one or two 32-column windows (k <= 17, k >= 18), odd and even column-block
# counts (the shifted copy), two row blocks at a time and a leftover one, four column
# blocks and a remainder -- against the float64 reference, in NCHW, a sliced input, and
# channels_last with a partial block of channels (the 16 x 16 transposes).
AMX_SHAPES = ((1, 5, 7), (2, 13, 13), (9, 32, 32), (17, 33, 50), (18, 16, 16), (31, 40, 70))


@pytest.mark.parametrize("k,h,w", AMX_SHAPES, ids=lambda v: str(v))
def test_amx_bf16_eval_every_blocking(k, h, w):
    if "amx" not in RUNNABLE:
        pytest.skip("needs a CPU with AMX-BF16 whose OS grants the tile state (Sapphire Rapids or later)")
    with cpu_level("amx"):
        for layout, c in (("nchw", 3), ("sliced", 3), ("channels_last", 19)):
            case = Case(n=2, c=c, h=h, w=w, k=k, dtype=torch.bfloat16, layout=layout)
            check_backend(make_inputs(case), "cpu", training=False, grads=False)


def cpuinfo_flags():
    """The CPU's flags as Linux's /proc/cpuinfo lists them (skips elsewhere)."""
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("reads the CPU's flags from Linux's /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        line = next((ln for ln in f if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def test_amx_level_needs_the_tile_permission():
    # The level is only offered where cpuid lists AMX and the OS lets the process use the
    # tile state; then it is the default, ahead of avx512.
    levels = cmk.cpu_capabilities()
    if "amx" not in levels:
        pytest.skip("the amx level was not compiled (compiler without -mamx-tile, or not x86-64)")
    flags = cpuinfo_flags()
    assert levels["amx"] == ("amx_bf16" in flags and "amx_tile" in flags)
    if "avx512" in levels:
        assert list(levels).index("amx") < list(levels).index("avx512")


def test_avx512_bf16_level_follows_the_cpu_flag():
    # The avx512_bf16 level (vdpbf16ps convolutions, csrc/cpu/bf16_dot_conv.h) runs where
    # cpuid lists AVX512_BF16, and is preferred to avx512 there.
    levels = cmk.cpu_capabilities()
    if "avx512_bf16" not in levels:
        pytest.skip("the avx512_bf16 level was not compiled (compiler without -mavx512bf16, or not x86-64)")
    flags = cpuinfo_flags()
    assert levels["avx512_bf16"] == ("avx512_bf16" in flags and "avx512bw" in flags)
    if "avx512" in levels:
        assert list(levels).index("avx512_bf16") < list(levels).index("avx512")


# The avx512_bf16 level's bf16 NCHW convolution pairs taps (bf16_dot_conv.h): even and odd
# k (the odd last column on FMAs), one and two vectors per row (w <= 16 and > 16), the
# generic-k path (k = 4, 11), a sliced input (strided rows through the scalar loads), in
# eval and in training with gradients, against the float64 reference.
@pytest.mark.parametrize("k,h,w", ((1, 5, 7), (2, 9, 16), (3, 13, 17), (4, 6, 33), (9, 32, 32), (11, 12, 40)),
                         ids=lambda v: str(v))
def test_avx512_bf16_conv_every_path(k, h, w):
    if "avx512_bf16" not in RUNNABLE:
        pytest.skip("needs a CPU with AVX-512 BF16 (Zen 4, Sapphire Rapids or later)")
    with cpu_level("avx512_bf16"):
        for layout in ("nchw", "sliced"):
            case = Case(n=2, c=3, h=h, w=w, k=k, dtype=torch.bfloat16, layout=layout)
            for training in (False, True):
                check_backend(make_inputs(case), "cpu", training=training, grads=training)
