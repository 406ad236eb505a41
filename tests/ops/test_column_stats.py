"""The CPU BatchNorm over matrix columns behind gemm_epilogue's training path
(csrc/cpu/column_stats.h): its sums against float64, its accuracy against ATen's float32
(rows, C) batch norm, which it replaces because that one is 20-100x less accurate than the
NCHW kernel, bitwise independence of the thread count, opcheck and its argument errors."""

import pytest
import torch

from convmixer_kernels.ops import gemm_epilogue_blocked as blocked

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.convmixer_kernels, "_kernel_column_moments"),
                                reason="the compiled extension is not built")
ops = torch.ops.convmixer_kernels
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def matrix(rows, cols, dtype, *, strided=False, shift=0.0, seed=None):
    gen = torch.Generator().manual_seed(torch.seed() if seed is None else seed)
    full = torch.randn(rows, cols + 5 if strided else cols, generator=gen, dtype=torch.float64) + shift
    return (full[:, 2:2 + cols] if strided else full).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (127, 17), (129, 1), (1000, 33), (20000, 5)])
def test_moments_equal_float64_sums(dtype, rows, cols):
    u, v = matrix(rows, cols, dtype, strided=True), matrix(rows, cols, dtype, shift=2.0)
    cu = torch.randn(cols, dtype=acc(dtype))
    cv = torch.randn(cols, dtype=acc(dtype))
    sum_u, sum_uv = ops._kernel_column_moments(u, v, cu, cv)
    du, dv = u.double() - cu.double(), v.double() - cv.double()
    assert sum_u.dtype == torch.float64 and sum_u.shape == (cols,)
    # Float sums over chunks of 128 rows: a few float ulps of each chunk's magnitude.
    tol = 1e-12 if dtype == torch.float64 else 4e-6
    scale = du.abs().sum(0) + 1
    assert ((sum_u - du.sum(0)).abs() / scale).max() < tol
    assert ((sum_uv - (du * dv).sum(0)).abs() / ((du * dv).abs().sum(0) + 1)).max() < tol
    # No centers: plain sums; u given twice: sums of squares.
    sum_u0, sum_uu = ops._kernel_column_moments(u, u, None, None)
    assert ((sum_u0 - u.double().sum(0)).abs() / (u.double().abs().sum(0) + 1)).max() < tol
    assert ((sum_uu - (u.double() ** 2).sum(0)).abs() / ((u.double() ** 2).sum(0) + 1)).max() < tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_u", (False, True))
def test_affine_rounds_once(dtype, with_u):
    rows, cols = 300, 19
    v, u = matrix(rows, cols, dtype, strided=True), matrix(rows, cols, dtype)
    cv, kv, k0, ku = (torch.randn(cols, dtype=acc(dtype)) for _ in range(4))
    out = ops._kernel_column_affine(v, cv, kv, k0, u if with_u else None, ku if with_u else None)
    assert out.dtype == dtype and out.shape == (rows, cols) and out.is_contiguous()
    terms = [(v.double() - cv.double()) * kv.double(), k0.double().expand(rows, cols)]
    if with_u:
        terms.append(u.double() * ku.double())
    exact = sum(terms)
    magnitude = sum(t.abs() for t in terms)
    # Computed in the accumulation dtype (a few of its ulps of the terms' magnitude) and
    # rounded once to dtype (half an ulp of the result).
    ulp = {torch.float64: 2.0 ** -52, torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -7,
           torch.float16: 2.0 ** -10}[dtype]
    acc_ulp = 2.0 ** -52 if dtype == torch.float64 else 2.0 ** -23
    err = (out.double() - exact).abs()
    assert (err <= 0.5 * ulp * exact.abs() + 4 * acc_ulp * magnitude).all(), err.max()


def _stats_errors(rows, cols, shift, fn):
    gen = torch.Generator().manual_seed(0)
    a64 = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 0.5 + shift
    mean, var = fn(a64.float())
    ref_mean, ref_var = a64.mean(0), a64.var(0, unbiased=False)
    return (((mean.double() - ref_mean).abs() / ref_mean.abs()).max().item(),
            ((var.double() - ref_var).abs() / ref_var).max().item())


def _ours(a):
    y, z, mean, var = blocked.forward_train(a, torch.eye(a.shape[1]), None, None, None, 1e-5, "relu")
    return mean, var


def _aten(a):
    _, mean, invstd = torch.ops.aten.native_batch_norm(a, None, None, None, None, True, 0.0, 1e-5)
    return mean, invstd.double().pow(-2) - 1e-5


def test_training_statistics_near_float64():
    # Values around 3 with spread 0.5 (so relu is the identity and a = x), 65536 rows: the
    # mean within one float32 ulp of float64's, the variance within two. ATen's float32
    # (rows, C) batch norm misses both: 4.4e-6 and 6.2e-6 measured on this data.
    ours_mean, ours_var = _stats_errors(65536, 64, 3.0, _ours)
    assert ours_mean < 2.0 ** -23 and ours_var < 2.0 ** -22, (ours_mean, ours_var)


def test_backward_sums_near_float64():
    rows, cols = 65536, 16
    gen = torch.Generator().manual_seed(1)
    a64 = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 0.5 + 3.0
    dy64 = torch.randn(rows, cols, generator=gen, dtype=torch.float64) + 0.5
    mean = a64.mean(0).float()
    var = a64.var(0, unbiased=False).float()
    gamma = torch.ones(cols)
    da, dgamma, dbeta = blocked._batch_norm_backward_columns(dy64.float(), a64.float(), gamma, mean, var, 1e-5, True)
    invstd = (var.double() + 1e-5).rsqrt()
    xhat = (a64.float().double() - mean.double()) * invstd
    dy = dy64.float().double()
    ref_dbeta, ref_dgamma = dy.sum(0), (dy * xhat).sum(0)
    ref_da = invstd * (dy - ref_dbeta / rows - xhat * ref_dgamma / rows)
    assert ((dbeta - ref_dbeta).abs() / ref_dbeta.abs()).max() < 1e-6
    assert ((dgamma - ref_dgamma).abs() / dy.abs().sum(0)).max() < 1e-7
    # da is a difference of three terms: float32 rounding relative to their magnitude.
    magnitude = invstd * (dy.abs() + (ref_dbeta / rows).abs() + (xhat * ref_dgamma / rows).abs())
    assert ((da.double() - ref_da).abs() / magnitude).max() < 1e-6


def test_threads_do_not_change_a_bit():
    u, v = matrix(5000, 37, torch.float32), matrix(5000, 37, torch.float32)
    c = torch.randn(37)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append((*ops._kernel_column_moments(u, v, c, c), ops._kernel_column_affine(v, c, c, c, u, c)))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for mine, theirs in zip(results[0], other):
            assert torch.equal(mine, theirs)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_opcheck(dtype):
    u, v = matrix(50, 7, dtype), matrix(50, 7, dtype, strided=True)
    c = torch.randn(7, dtype=acc(dtype))
    torch.library.opcheck(ops._kernel_column_moments, (u, v, c, None))
    torch.library.opcheck(ops._kernel_column_affine, (v, c, c, c, u, c))
    torch.library.opcheck(ops._kernel_column_affine, (v, c, c, c, None, None))


@pytest.mark.parametrize("call,message", [
    (lambda u, c: ops._kernel_column_moments(u[0], u[0], None, None), "u must be 2-D"),
    (lambda u, c: ops._kernel_column_moments(u.t(), u.t(), None, None), "u must have contiguous columns"),
    (lambda u, c: ops._kernel_column_moments(u, u[:, :3], None, None), "v must have the shape"),
    (lambda u, c: ops._kernel_column_moments(u, u.double(), None, None), "v must have the dtype"),
    (lambda u, c: ops._kernel_column_moments(u.int(), u.int(), None, None), "u must be float32"),
    (lambda u, c: ops._kernel_column_moments(u, u, c.double(), None), "u_center must be Float"),
    (lambda u, c: ops._kernel_column_moments(u, u, c[:3], None), r"u_center must have shape \(5,\)"),
    (lambda u, c: ops._kernel_column_affine(u, c, c, c, u, None), "u and u_scale must both be given"),
    (lambda u, c: ops._kernel_column_affine(u, c, c[::2], c, None, None), "v_scale must"),
    (lambda u, c: ops._kernel_column_affine(u.as_strided((4, 5), (2, 1)), c, c, c, None, None),
     "rows must not overlap"),
])
def test_errors_name_the_argument(call, message):
    u, c = torch.randn(4, 5), torch.randn(5)
    with pytest.raises(RuntimeError, match=message):
        call(u, c)
