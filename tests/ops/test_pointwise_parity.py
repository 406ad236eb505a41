"""gemm_epilogue / patch_conv_block (the pointwise block Conv2d(h, h, 1) -> act -> BN and the
stem Conv2d(3, h, p, stride=p) -> act -> BN) against the float64 reference: outputs,
running statistics and every gradient, each error within twice eager's own at the same
precision plus parity.ATOL, outputs poisoned, fresh random inputs, odd shapes."""

import itertools

import pytest
import torch

from convmixer_kernels.ops.gemm_epilogue import gemm_epilogue, patch_conv_block
from convmixer_kernels.reference import ACTIVATIONS, normalized_activation, patch_conv_block_reference
from tests.harness.parity import ATOL, poisoned_outputs, rel_err
from tests.harness.sweep import OPTIONAL_PARAMETERS

# (N, C, H, W, out channels, p, layout): pointwise (p = 1) with C and O multiples of
# nothing, channels_last and sliced inputs, batch 1; stems whose size leaves a remainder.
SHAPES = [
    (2, 13, 7, 7, 17, 1, "nchw"),
    (1, 5, 33, 31, 9, 1, "channels_last"),
    (3, 6, 13, 13, 6, 1, "sliced"),
    (3, 3, 31, 31, 16, 7, "nchw"),
    (2, 3, 15, 14, 8, 2, "channels_last"),
]


def make(shape, dtype, bias=True, affine=True, running=True, seed=None):
    seed = torch.seed() if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w, o, p, layout = shape

    def randn(*size, scale=1.0, shift=0.0):
        return torch.randn(*size, generator=gen, dtype=torch.float64) * scale + shift

    x = randn(n, c, h, w)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = randn(n, c, 2 * h, w)[:, :, ::2]
    tensors = dict(
        x=x, weight=randn(o, c, p, p, scale=(c * p * p) ** -0.5), bias=randn(o, scale=0.5) if bias else None,
        gamma=randn(o, scale=0.3, shift=1.0) if affine else None, beta=randn(o, scale=0.3) if affine else None,
        running_mean=randn(o, scale=0.2) if running else None,
        running_var=randn(o).abs() + 0.5 if running else None,
    )
    return seed, tensors, dtype


def run(tensors, dtype, *, training, activation, fn, grad_out=None):
    """fn on copies (x, conv weight and bias in dtype; BN vectors in float32 unless dtype
    is float64); returns y, the running statistics and the gradients."""
    vec = torch.float64 if dtype == torch.float64 else torch.float32
    cast = {name: (t.to(vec if name in ("gamma", "beta", "running_mean", "running_var") else dtype).clone()
                   if t is not None else None) for name, t in tensors.items()}
    leaves = [cast[k] for k in ("x", "weight", "bias", "gamma", "beta")]
    for t in leaves:
        if t is not None:
            t.requires_grad_(True)
    args = [cast[k] for k in ("x", "weight", "bias", "gamma", "beta", "running_mean", "running_var")]
    y = fn(*args, training=training, activation=activation)
    y.backward(grad_out.to(y.dtype))
    out = {"y": y.detach(), "running_mean": cast["running_mean"], "running_var": cast["running_var"]}
    out.update({f"d{k}": t.grad for k, t in zip(("x", "weight", "bias", "gamma", "beta"), leaves) if t is not None})
    return out


def fused(*args, training, activation):
    with poisoned_outputs():
        return patch_conv_block(*args, training=training, activation=activation, backend="blocked")


def reference(*args, training, activation):
    return patch_conv_block_reference(*args, training=training, activation=activation)


def summand_scales(tensors, *, training, activation, grad_out):
    """sum |dh| |x| and sum |dh| (h the conv output) in float64: the magnitudes of the
    sums that make dweight and dbias. With ReLU (or few rows) the block is nearly
    invariant to scaling the conv, so those sums cancel and max|ref| measures the
    cancellation, not the computation (parity.summand_scales, the same rule)."""
    x, w = tensors["x"], tensors["weight"].clone().requires_grad_(True)
    h = torch.nn.functional.conv2d(x, w, tensors["bias"], stride=w.shape[-1])
    h.retain_grad()
    stats = [t.clone() if t is not None else None for t in (tensors["running_mean"], tensors["running_var"])]
    normalized_activation(h, tensors["gamma"], tensors["beta"], *stats, training=training,
                          activation=activation).backward(grad_out)
    dh = h.grad.abs()
    magnitude = torch.autograd.grad(torch.nn.functional.conv2d(x.abs(), w, None, stride=w.shape[-1]), w, dh)[0]
    return {"dweight": magnitude, "dbias": dh.sum(dim=(0, 2, 3))}


def check(shape, dtype, training, activation, **optional):
    seed, tensors, dtype = make(shape, dtype, **optional)
    n, _, h, w, o, p, _ = shape
    grad_out = torch.randn(n, o, h // p, w // p, dtype=torch.float64)
    ref64 = run(tensors, torch.float64, training=training, activation=activation, fn=reference, grad_out=grad_out)
    eager = run(tensors, dtype, training=training, activation=activation, fn=reference, grad_out=grad_out)
    out = run(tensors, dtype, training=training, activation=activation, fn=fused, grad_out=grad_out)
    assert out["y"].dtype == dtype and out["y"].is_contiguous(memory_format=torch.channels_last)
    scales = summand_scales(tensors, training=training, activation=activation, grad_out=grad_out)
    for what, ref in ref64.items():
        if ref is None:
            assert out[what] is None
            continue
        got = out[what]
        assert got.shape == ref.shape and got.isfinite().all(), f"{what}: unwritten or wrong shape, seed {seed}"
        scale = scales.get(what)
        err, eager_err = rel_err(got, ref, scale), rel_err(eager[what], ref, scale)
        bound = 2 * eager_err + ATOL[dtype]
        assert err <= bound, (f"{what}: error {err:.3g} > {bound:.3g} (eager {eager_err:.3g}) for {shape} "
                              f"{dtype} training={training} {activation} {optional} seed {seed}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + s[6])
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=("f32", "bf16"))
def test_parity_every_activation(shape, training, dtype):
    for activation in ACTIVATIONS:
        check(shape, dtype, training, activation)


@pytest.mark.parametrize("bias,affine,running", OPTIONAL_PARAMETERS)
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
def test_parity_optional_parameters(bias, affine, running, training):
    for shape in (SHAPES[0], SHAPES[3]):
        check(shape, torch.float32, training, "gelu", bias=bias, affine=affine, running=running)


def test_parity_float16_and_float64():
    check(SHAPES[1], torch.float16, True, "silu")
    check(SHAPES[3], torch.float64, True, "gelu")


def test_eval_over_several_row_blocks():
    from convmixer_kernels.ops import gemm_epilogue_blocked as blocked

    x, w = torch.randn(3 * blocked.MIN_BLOCK_ROWS + 7, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    b, rm, rv = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    old = blocked.BLOCK_BYTES
    blocked.BLOCK_BYTES = 1  # every block MIN_BLOCK_ROWS rows: four blocks, the last one partial
    try:
        with poisoned_outputs():
            y = gemm_epilogue(x, w, b, None, None, rm, rv, training=False, activation="relu")
    finally:
        blocked.BLOCK_BYTES = old
    torch.testing.assert_close(y, (torch.relu(x @ w.t() + b) - rm) / torch.sqrt(rv + 1e-5))


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b, g, be = (torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    for training, activation in itertools.product((True, False), ("gelu", "silu")):
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        torch.autograd.gradcheck(lambda *t: gemm_epilogue(*t, rm, rv, training=training, momentum=0.0,
                                                          activation=activation), (x, w, b, g, be))


@pytest.mark.parametrize("training", (False, True))
def test_opcheck(training):
    x, w, b = torch.randn(11, 6), torch.randn(5, 6), torch.randn(5)
    g, be, rm, rv = torch.rand(5) + 0.5, torch.randn(5), torch.randn(5), torch.rand(5) + 0.5
    ops = torch.ops.convmixer_kernels
    inputs = [t.requires_grad_(True) for t in (x.clone(), w.clone(), b.clone(), g.clone(), be.clone())]
    if training:
        torch.library.opcheck(ops.gemm_epilogue_train, (*inputs, 1e-5, "relu", "blocked"))
    else:
        torch.library.opcheck(ops.gemm_epilogue_eval, (*inputs, rm, rv, 1e-5, "gelu", "blocked"))
    torch.library.opcheck(ops.gemm_epilogue_backward,
                          (torch.randn(11, 5), x, w, torch.randn(11, 5), g, rm, rv, 1e-5, training, "silu", "blocked"))


@pytest.mark.parametrize("call,message", [
    (lambda x, w: gemm_epilogue(x[0], w, None, None, None, None, None, training=True), r"x must be a 2-D tensor"),
    (lambda x, w: gemm_epilogue(x, w[:, :3], None, None, None, None, None, training=True),
     r"weight must be 2-D \(out_features, 6\)"),
    (lambda x, w: gemm_epilogue(x, w, torch.zeros(4), None, None, None, None, training=True),
     r"bias must be a floating-point vector of shape \(5,\)"),
    (lambda x, w: gemm_epilogue(x, w, None, None, None, torch.zeros(5), None, training=True),
     r"running_mean and running_var must both be given"),
    (lambda x, w: gemm_epilogue(x, w.double(), None, None, None, None, None, training=True),
     r"weight must have x's dtype"),
    (lambda x, w: gemm_epilogue(x, w, None, None, None, None, None, training=True, activation="tanh"),
     r"activation must be one of"),
    (lambda x, w: gemm_epilogue(x[:1], w, None, None, None, None, None, training=True),
     r"batch statistics need more than one row"),
    (lambda x, w: gemm_epilogue(x, w, None, None, None, None, None, training=True, backend="cuda"),
     r"backend must be 'auto' or one of"),
    (lambda x, w: patch_conv_block(torch.randn(2, 6, 3, 3), w.view(5, 6, 1, 1).expand(5, 6, 4, 4), None, None,
                                   None, None, None, training=True), r"smaller than one 4x4 patch"),
])
def test_errors_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        call(torch.randn(7, 6), torch.randn(5, 6))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
def test_nan_and_inf_land_where_eager_puts_them(training, activation):
    # +-inf and NaN in x, through a CPU float32 GEMM (oneDNN's) and ATen's activation: y, dx
    # and dweight have NaN and inf where float64 eager puts them and are finite elsewhere.
    # One exception, ATen's own: its vectorized float32 GELU gives NaN at +inf (its scalar
    # tail +inf), and the epilogue runs ATen's GELU, as eager's modules do.
    _, tensors, _ = make((2, 6, 5, 5, 7, 1, "channels_last"), torch.float32)
    x = tensors["x"].clone()
    x[0, 1, 2, 3], x[1, 4, 0, 0], x[1, 0, 4, 4] = float("inf"), float("-inf"), float("nan")
    tensors["x"] = x
    grad_out = torch.randn(2, 7, 5, 5, dtype=torch.float64)
    out = run(tensors, torch.float32, training=training, activation=activation, fn=fused, grad_out=grad_out)
    ref = run(tensors, torch.float64, training=training, activation=activation, fn=reference, grad_out=grad_out)
    for what in ("y", "dx", "dweight"):
        got, want = out[what].double(), ref[what]
        aten_gelu_inf = (want == float("inf")) & (activation == "gelu" and what == "y")
        assert torch.equal(got.isfinite(), want.isfinite()), what
        assert torch.equal(got[~aten_gelu_inf].isnan(), want[~aten_gelu_inf].isnan()), what
        assert torch.equal(got[~aten_gelu_inf].isinf(), want[~aten_gelu_inf].isinf()), what
    assert not out["y"].isfinite().all()
    if not training:  # in training the batch statistics carry a NaN to every row
        assert out["y"].isfinite().any()
