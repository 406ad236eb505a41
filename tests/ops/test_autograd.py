"""gradcheck in float64 on the CPU, and torch.library.opcheck of the custom ops."""

import pytest
import torch

from convmixer_kernels import mixer_block
from tests.harness.parity import Case, make_inputs

BACKENDS = ("cpu", "eager")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("activation,k,layout", [
    ("gelu", 3, "nchw"),
    ("gelu_tanh", 2, "channels_last"),
    ("silu", 4, "nchw"),
    ("relu", 5, "channels_last"),
])
def test_gradcheck(backend, training, activation, k, layout):
    inp = make_inputs(Case(n=2, c=3, h=5, w=6, k=k, dtype=torch.float64, layout=layout, activation=activation))
    rm, rv = inp.running_mean, inp.running_var

    def block(x, w, b, g, beta):
        return mixer_block(x, w, b, g, beta, rm.clone(), rv.clone(), training=training,
                           activation=activation, backend=backend)

    leaves = [t.detach().clone().requires_grad_() for t in (inp.x, inp.weight, inp.bias, inp.gamma, inp.beta)]
    assert torch.autograd.gradcheck(block, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def _op_samples(backend, dtype=torch.float32):
    samples = []
    for layout, k in (("nchw", 3), ("channels_last", 4)):
        inp = make_inputs(Case(n=2, c=5, h=6, w=7, k=k, dtype=dtype, layout=layout))
        x, w, b, g, beta, rm, rv = inp.tensors()
        acc = g.dtype
        grad_out = inp.grad_out.clone(memory_format=torch.preserve_format).contiguous(
            memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
        mean = torch.randn(5, dtype=acc)
        var = torch.rand(5, dtype=acc) + 0.5
        samples.append(dict(
            eval=(x, w, b, g, beta, rm, rv, 1e-5, "gelu", backend),
            train=(x, w, b, g, beta, 1e-5, "silu", backend),
            train_no_affine=(x, w, None, None, None, 1e-5, "relu", backend),
            backward=(grad_out, x, w, b, g, mean, var, 1e-5, True, "gelu_tanh", backend),
        ))
    return samples


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_custom_ops(backend):
    ops = torch.ops.convmixer_kernels
    for sample in _op_samples(backend):
        for name, op in (("eval", ops.mixer_block_eval), ("train", ops.mixer_block_train),
                         ("train_no_affine", ops.mixer_block_train), ("backward", ops.mixer_block_backward)):
            args = [a.clone().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor)
                    and name != "backward" and i < 5 else a for i, a in enumerate(sample[name])]
            torch.library.opcheck(op, args)


def test_opcheck_kernel_ops():
    ops = torch.ops.convmixer_kernels
    for sample in _op_samples("cpu"):
        torch.library.opcheck(ops._kernel_forward_eval, sample["eval"][:-1])
        torch.library.opcheck(ops._kernel_forward_train, sample["train"][:-1])
        torch.library.opcheck(ops._kernel_backward, sample["backward"][:-1])
