"""The parity harness every backend's tests use.

- fresh random inputs for every check (the seed is drawn anew and printed on failure);
- the reference is reference.py run in float64 on the CPU;
- a backend's error, max|out - ref| / max|ref|, may be at most twice eager PyTorch's own
  error at the same precision on the same device, plus a small atol per dtype; for the
  conv's weight and bias gradients, sums over (N, H, W) that BatchNorm's invariances make
  cancel, the error is taken relative to the sum of the summands' magnitudes instead
  (see `summand_scales`);
- outputs are poisoned: under `poisoned_outputs()` torch.empty fills floats with NaN, so
  an element a kernel forgets to write cannot pass.
"""

import contextlib
import copy
import os
import statistics
from dataclasses import dataclass, replace
from typing import Dict, List, NamedTuple, Optional

import pytest
import torch

from convmixer_kernels import mixer_block
from convmixer_kernels.reference import depthwise_conv_same, mixer_block_reference, normalized_activation

# Added to twice eager's error; eager itself reaches about 1e-7 (float32), 1e-3 (float16)
# and 8e-3 (bfloat16) on these inputs.
ATOL = {
    torch.float64: 1e-12,
    torch.float32: 2e-6,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
}

# The gpu tests that scripts/gpu_check.sh runs in its few minutes on a GPU: whole tests
# or parameter values with this mark (pytest -m gpu_quick).
GPU_QUICK = pytest.mark.gpu_quick


@contextlib.contextmanager
def poisoned_outputs():
    """torch.empty / at::empty fill floating tensors with NaN inside this block."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = was_fill


@dataclass
class Case:
    n: int
    c: int
    h: int
    w: int
    k: int
    dtype: torch.dtype = torch.float32
    layout: str = "nchw"
    activation: str = "gelu"
    bias: bool = True
    affine: bool = True
    running: bool = True
    device: str = "cpu"

    def __str__(self):
        return (f"N{self.n} C{self.c} {self.h}x{self.w} k{self.k} {str(self.dtype)[6:]} {self.layout} "
                f"{self.activation} bias={self.bias} affine={self.affine} running={self.running}")


@dataclass
class Inputs:
    case: Case
    seed: int
    x: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    gamma: Optional[torch.Tensor]
    beta: Optional[torch.Tensor]
    running_mean: Optional[torch.Tensor]
    running_var: Optional[torch.Tensor]
    grad_out: torch.Tensor

    def tensors(self):
        return (self.x, self.weight, self.bias, self.gamma, self.beta, self.running_mean, self.running_var)

    def to(self, dtype=None, device=None):
        """A copy in dtype (activation, conv parameters; BN vectors stay in their
        accumulation dtype unless dtype is float64) on device, keeping x's layout."""
        def conv(t, is_bn=False):
            if t is None:
                return None
            target = dtype
            if is_bn and dtype is not None and dtype != torch.float64:
                target = torch.float32
            return t.detach().to(device=device, dtype=target).clone()

        x = self.x.detach().to(device=device, dtype=dtype)
        if self.case.layout == "sliced":
            x = _sliced_copy(x)
        else:
            x = x.clone(memory_format=torch.preserve_format)
        return replace(
            self,
            x=x,
            weight=conv(self.weight),
            bias=conv(self.bias),
            gamma=conv(self.gamma, True),
            beta=conv(self.beta, True),
            running_mean=conv(self.running_mean, True),
            running_var=conv(self.running_var, True),
            grad_out=self.grad_out.detach().to(device=device, dtype=dtype).clone(),
        )


def _sliced_copy(x: torch.Tensor) -> torch.Tensor:
    """x's values in a non-contiguous view (every other column of a wider buffer, with
    offsets in C and H), so neither dense layout fits."""
    n, c, h, w = x.shape
    base = torch.full((n, c + 2, h + 3, 2 * w + 1), float("nan"), dtype=x.dtype, device=x.device)
    view = base[:, 1 : c + 1, 2 : h + 2, 1::2]
    view.copy_(x)
    assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
    return view


def make_inputs(case: Case, seed: Optional[int] = None) -> Inputs:
    """Fresh random inputs (never zeros) in case.dtype on case.device, x in case.layout."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    g = torch.Generator().manual_seed(seed)
    acc = torch.float64 if case.dtype == torch.float64 else torch.float32

    def randn(*shape, scale=1.0, shift=0.0, dtype=case.dtype):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    c = case.c
    x = randn(case.n, c, case.h, case.w)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif case.layout == "sliced":
        x = _sliced_copy(x)
    inputs = Inputs(
        case=case,
        seed=seed,
        x=x,
        # Scaled so h = conv(x) is O(1) for every k and the activation's curve matters.
        weight=randn(c, 1, case.k, case.k, scale=1.0 / case.k),
        bias=randn(c, scale=0.3) if case.bias else None,
        gamma=randn(c, scale=0.3, shift=1.0, dtype=acc) if case.affine else None,
        beta=randn(c, scale=0.3, dtype=acc) if case.affine else None,
        running_mean=randn(c, scale=0.2, dtype=acc) if case.running else None,
        running_var=(torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(acc) if case.running else None,
        grad_out=randn(case.n, c, case.h, case.w),
    )
    return inputs.to(device=case.device)


def rel_err(out: torch.Tensor, ref: torch.Tensor, scale: Optional[torch.Tensor] = None) -> float:
    """max|out - ref| / max(scale), scale |ref| unless given."""
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    top = (ref.abs() if scale is None else scale).max().item()
    return (out - ref).abs().max().item() / (top if top > 0 else 1.0)


def summand_scales(inputs: Inputs, *, training: bool, momentum=0.1) -> dict:
    """The float64 magnitudes of the sums that make dweight and dbias: sum |dh| |x| and
    sum |dh| over (N, H, W), dh = dL/dh for h = conv(x) + bias.

    At k = 1 BatchNorm makes the block invariant to the conv's scale and shift (up to
    eps), and with few values per channel nearly so, so dweight and dbias are sums of O(1)
    terms that cancel to almost nothing. Any float32 implementation, eager included, then
    errs by a few ulps of those terms, and max|ref| measures the cancellation, not the
    computation: a kernel's error against it is luck. Relative to the summands, the
    error of an exact-but-rounded sum is O(ulp), and a wrong term is O(1)."""
    inp = inputs.to(dtype=torch.float64, device="cpu")
    x, weight = inp.x, inp.weight.requires_grad_(True)
    h = depthwise_conv_same(x, weight, inp.bias)
    h.retain_grad()
    normed = normalized_activation(h, inp.gamma, inp.beta, inp.running_mean, inp.running_var, training=training,
                                   momentum=momentum, activation=inp.case.activation)
    (x + normed).backward(inp.grad_out)
    dh = h.grad.abs()
    magnitude = torch.autograd.grad(depthwise_conv_same(x.abs(), weight, None), weight, dh)[0]
    return {"dweight": magnitude, "dbias": dh.sum(dim=(0, 2, 3))}


def assert_close(what: str, out, ref64, eager, dtype, inputs: Inputs):
    """out must be within 2x eager's error (both against the float64 reference) + atol."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    if ref64.isfinite().all():
        assert out.detach().isfinite().all(), f"{what}: non-finite values (unwritten?) for {inputs.case} seed {inputs.seed}"
    err = rel_err(out, ref64)
    eager_err = rel_err(eager, ref64)
    bound = 2 * eager_err + ATOL[dtype]
    assert err <= bound, (
        f"{what}: error {err:.3g} > bound {bound:.3g} (eager {eager_err:.3g}) for {inputs.case} seed {inputs.seed}"
    )


def run_block(inputs: Inputs, *, training: bool, backend: Optional[str], momentum=0.1, grads=False):
    """Runs the block (backend=None: the reference) on copies of inputs; returns y, the
    running stats after the call and, with grads, the gradients of x, weight, bias,
    gamma, beta."""
    inp = inputs.to()
    leaves = [inp.x, inp.weight, inp.bias, inp.gamma, inp.beta]
    if grads:
        for t in leaves:
            if t is not None:
                t.requires_grad_(True)
    args = (inp.x, inp.weight, inp.bias, inp.gamma, inp.beta, inp.running_mean, inp.running_var)
    if backend is None:
        y = mixer_block_reference(*args, training=training, momentum=momentum, activation=inp.case.activation)
    else:
        with poisoned_outputs():
            y = mixer_block(*args, training=training, momentum=momentum, activation=inp.case.activation,
                            backend=backend)
    result = {"y": y.detach(), "running_mean": inp.running_mean, "running_var": inp.running_var}
    if grads:
        if backend is None:
            y.backward(inp.grad_out)
        else:
            with poisoned_outputs():
                y.backward(inp.grad_out)
        for name, t in zip(("dx", "dweight", "dbias", "dgamma", "dbeta"), leaves):
            result[name] = t.grad if t is not None else None
    return result


class Errors(NamedTuple):
    """One output's error against the float64 reference, eager's, and the bound."""
    error: float
    eager: float
    bound: float
    seeds: List[int]


def backend_errors(inputs: Inputs, backend: str, *, training: bool, grads: bool = True, momentum=0.1,
                   trials: Optional[int] = None) -> Dict[str, Errors]:
    """Runs `backend` and eager at inputs' precision and the float64 CPU reference;
    asserts dtypes, shapes and that nothing is left unwritten, and returns each output's
    (median) error, eager's, and the bound `check_backend` holds it to.

    Training gradients pass through BatchNorm's invariances (sum(da) = 0, and for k = 1
    the conv's scale), so they are sums that cancel: dweight and dbias are measured
    against their summands (`summand_scales`), and since with few values per channel
    even dgamma's single-draw error is mostly luck, eager's included, the bound compares
    the median error over `trials` fresh inputs (default 5) with eager's median;
    elsewhere one draw decides."""
    if trials is None:
        trials = 5 if training and grads else 1
    dtype = inputs.case.dtype
    errors = {}
    for trial in range(trials):
        inp = inputs if trial == 0 else make_inputs(inputs.case)
        out = run_block(inp, training=training, backend=backend, grads=grads, momentum=momentum)
        assert out["y"].dtype == dtype
        if inp.case.layout == "channels_last":
            assert out["y"].is_contiguous(memory_format=torch.channels_last), "output lost channels_last"
        eager = run_block(inp, training=training, backend=None, grads=grads, momentum=momentum)
        ref = run_block(inp.to(dtype=torch.float64, device="cpu"), training=training, backend=None,
                        grads=grads, momentum=momentum)
        scales = summand_scales(inp, training=training, momentum=momentum) if grads else {}
        for name in ("y", "running_mean", "running_var", "dx", "dweight", "dbias", "dgamma", "dbeta"):
            if name not in ref or ref[name] is None:
                assert out.get(name) is None, f"{name} should be None"
                continue
            assert out[name].dtype == eager[name].dtype, f"{name}: dtype {out[name].dtype} != eager's {eager[name].dtype}"
            assert out[name].shape == ref[name].shape, f"{name}: shape {tuple(out[name].shape)} != {tuple(ref[name].shape)}"
            if ref[name].isfinite().all():
                assert out[name].isfinite().all(), f"{name}: non-finite values (unwritten?) for {inp.case} seed {inp.seed}"
            scale = scales.get(name)
            errors.setdefault(name, []).append(
                (rel_err(out[name], ref[name], scale), rel_err(eager[name], ref[name], scale), inp.seed))
    result = {}
    for name, draws in errors.items():
        # Running statistics and BN gradients are float32 (float64) vectors in any case.
        bound_dtype = dtype if name in ("y", "dx", "dweight", "dbias") else (
            torch.float64 if dtype == torch.float64 else torch.float32)
        eager_err = statistics.median(d[1] for d in draws)
        result[name] = Errors(statistics.median(d[0] for d in draws), eager_err, 2 * eager_err + ATOL[bound_dtype],
                              [d[2] for d in draws])
    return result


def check_backend(inputs: Inputs, backend: str, *, training: bool, grads: bool = True, momentum=0.1,
                  trials: Optional[int] = None):
    """Asserts the backend's outputs, running stats and gradients are within 2x eager's
    error + atol (see `backend_errors`)."""
    errors = backend_errors(inputs, backend, training=training, grads=grads, momentum=momentum, trials=trials)
    for name, e in errors.items():
        assert e.error <= e.bound, (
            f"{name}: error {e.error:.3g} > bound {e.bound:.3g} (eager {e.eager:.3g}; median of {len(e.seeds)}) "
            f"for {inputs.case} seeds {e.seeds}"
        )


def assert_compiled_block_matches(block: torch.nn.Module, x: torch.Tensor, **compile_kwargs):
    """torch.compile(fullgraph=True) of a copy of block gives block's output, and after a
    backward of the same random gradient its input and parameter gradients and its
    buffers (running statistics)."""
    compiled_block = copy.deepcopy(block)
    compiled = torch.compile(compiled_block, fullgraph=True, **compile_kwargs)
    x = x.detach().requires_grad_()
    xc = x.detach().clone().requires_grad_()
    y, yc = block(x), compiled(xc)
    torch.testing.assert_close(yc, y)
    dy = torch.randn_like(y)
    y.backward(dy)
    yc.backward(dy)
    torch.testing.assert_close(xc.grad, x.grad)
    for (name, p), pc in zip(block.named_parameters(), compiled_block.parameters()):
        torch.testing.assert_close(pc.grad, p.grad, msg=name)
    for (name, b), bc in zip(block.named_buffers(), compiled_block.buffers()):
        torch.testing.assert_close(bc, b, msg=name)
