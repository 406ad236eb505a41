"""Bad input gets an error naming the argument and what was expected."""

import warnings

import pytest
import torch

from convmixer_kernels import mixer_block
from convmixer_kernels.models import ConvMixer
from convmixer_kernels.modules import FusedMixerBlock, swap_mixer_blocks
from convmixer_kernels.reference import plain_mixer_block
from tests.harness.parity import Case, make_inputs


def _args(**override):
    inp = make_inputs(Case(n=2, c=4, h=6, w=6, k=3))
    args = dict(x=inp.x, conv_weight=inp.weight, conv_bias=inp.bias, bn_weight=inp.gamma, bn_bias=inp.beta,
                running_mean=inp.running_mean, running_var=inp.running_var)
    args.update(override)
    return args


def _call(backend="eager", training=False, **override):
    a = _args(**override)
    return mixer_block(a["x"], a["conv_weight"], a["conv_bias"], a["bn_weight"], a["bn_bias"],
                       a["running_mean"], a["running_var"], training=training, backend=backend)


@pytest.mark.parametrize("backend", ("cpu", "eager"))
@pytest.mark.parametrize("override,error,match", [
    (dict(x=torch.randn(4, 6, 6)), ValueError, r"x must be 4-D"),
    (dict(x=torch.randn(2, 4, 6, 6, dtype=torch.float64)), TypeError, r"conv_weight dtype torch.float32 must equal x dtype torch.float64"),
    (dict(x=torch.randint(0, 3, (2, 4, 6, 6))), TypeError, r"x must be float32, float16, bfloat16 or float64"),
    (dict(x=torch.randn(2, 5, 6, 6)), ValueError, r"conv_weight must be depthwise with shape \(5, 1, k, k\)"),
    (dict(conv_weight=torch.randn(4, 2, 3, 3)), ValueError, r"conv_weight must be depthwise"),
    (dict(conv_weight=torch.randn(4, 1, 3, 5)), ValueError, r"conv_weight must be square"),
    (dict(conv_weight=torch.randn(4, 1, 33, 33)), ValueError, r"kernel size must be in \[1, 31\], got 33"),
    (dict(conv_weight=torch.randn(4, 1, 3, 3, dtype=torch.float16)), TypeError, r"conv_weight dtype torch.float16"),
    (dict(conv_bias=torch.randn(5)), ValueError, r"conv_bias must have shape \(4,\)"),
    (dict(bn_weight=torch.randn(3)), ValueError, r"bn_weight must have shape \(4,\)"),
    (dict(bn_bias=torch.randn(4, 1)), ValueError, r"bn_bias must have shape \(4,\)"),
    (dict(running_mean=torch.randn(7)), ValueError, r"running_mean must have shape \(4,\)"),
    (dict(running_var=None), ValueError, r"running_mean and running_var must both be given"),
    (dict(conv_weight=torch.randn(4, 1, 3, 3, device="meta")), ValueError, r"conv_weight is on meta but x is on cpu"),
    (dict(running_var=torch.randn(4, device="meta")), ValueError, r"running_var is on meta but x is on cpu"),
])
def test_bad_input(backend, override, error, match):
    with pytest.raises(error, match=match):
        _call(backend, **override)


def test_bad_activation_backend_eps_momentum():
    a = _args()
    pos = list(a.values())
    with pytest.raises(ValueError, match=r"activation must be one of .*got 'tanh'"):
        mixer_block(*pos, training=False, activation="tanh")
    with pytest.raises(ValueError, match=r"backend must be 'auto' or one of .*got 'opencl'"):
        mixer_block(*pos, training=False, backend="opencl")
    with pytest.raises(ValueError, match=r"eps must be positive"):
        mixer_block(*pos, training=False, eps=0.0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        mixer_block(*pos, training=True, momentum=1.5)


def test_backend_that_cannot_run_says_why():
    pos = list(_args().values())
    with pytest.raises(RuntimeError, match=r"backend 'cuda' cannot run here: the cuda backend runs on cuda tensors"):
        mixer_block(*pos, training=False, backend="cuda")


def test_one_value_per_channel_in_training():
    inp = make_inputs(Case(n=1, c=4, h=1, w=1, k=3))
    with pytest.raises(ValueError, match=r"more than one value per channel"):
        mixer_block(*inp.tensors(), training=True, backend="cpu")


@pytest.mark.parametrize("name,args,match", [
    ("_kernel_forward_eval", "bad_layout", r"x must be contiguous NCHW or channels_last"),
    ("_kernel_forward_eval", "bad_k", r"kernel size must be in \[1, 31\]"),
    ("_kernel_forward_eval", "bad_stats_dtype", r"running_mean must be Float"),
    ("_kernel_forward_train", "bad_bias", r"conv_bias must have shape \(4,\)"),
    ("_kernel_backward", "bad_grad_layout", r"grad_out must have the memory layout of x"),
    ("_kernel_forward_eval", "bad_activation", r"activation must be one of"),
])
def test_kernel_op_checks(name, args, match):
    inp = make_inputs(Case(n=2, c=4, h=6, w=6, k=3))
    x, w, b, g, beta, rm, rv = inp.tensors()
    ops = torch.ops.convmixer_kernels
    calls = {
        "bad_layout": lambda: ops._kernel_forward_eval(x[:, :, ::2], w, b, g, beta, rm, rv, 1e-5, "gelu"),
        "bad_k": lambda: ops._kernel_forward_eval(x, torch.randn(4, 1, 32, 32), b, g, beta, rm, rv, 1e-5, "gelu"),
        "bad_stats_dtype": lambda: ops._kernel_forward_eval(x, w, b, g, beta, rm.double(), rv, 1e-5, "gelu"),
        "bad_bias": lambda: ops._kernel_forward_train(x, w, torch.randn(3), g, beta, 1e-5, "gelu"),
        "bad_grad_layout": lambda: ops._kernel_backward(
            inp.grad_out.contiguous(memory_format=torch.channels_last), x, w, b, g, rm, rv, 1e-5, True, "gelu"),
        "bad_activation": lambda: ops._kernel_forward_eval(x, w, b, g, beta, rm, rv, 1e-5, "swish"),
    }
    with pytest.raises(RuntimeError, match=match):
        calls[args]()


@pytest.mark.parametrize("name, value", [("momentum", None), ("momentum", "0.1"), ("eps", None)])
def test_momentum_or_eps_that_is_not_a_float(name, value):
    # momentum=None used to fail with "'<=' not supported between 'float' and 'NoneType'".
    pos = list(_args().values())
    with pytest.raises(TypeError, match=rf"mixer_block: {name} must be a float, got {value!r}"):
        mixer_block(*pos, training=True, **{name: value})
    with pytest.raises(TypeError, match=r"for BatchNorm's momentum=None pass 1 / num_batches_tracked"):
        mixer_block(*pos, training=True, momentum=None)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("backend", ["auto", "cpu", "eager"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_all_meta_tensors_give_meta_outputs_as_eager_does(training, backend, memory_format):
    meta = {k: v.to("meta") for k, v in _args().items()}
    meta["x"] = meta["x"].contiguous(memory_format=memory_format).requires_grad_()
    y = mixer_block(*meta.values(), training=training, backend=backend)
    eager = meta["x"] + torch.nn.functional.batch_norm(
        torch.nn.functional.gelu(torch.nn.functional.conv2d(meta["x"], meta["conv_weight"], meta["conv_bias"],
                                                            padding="same", groups=4)),
        meta["running_mean"], meta["running_var"], meta["bn_weight"], meta["bn_bias"], training)
    assert y.device.type == "meta" and y.shape == eager.shape and y.dtype == eager.dtype
    assert y.is_contiguous(memory_format=memory_format)
    y.sum().backward()
    assert meta["x"].grad.device.type == "meta" and meta["x"].grad.shape == meta["x"].shape


def test_a_model_built_on_meta_runs_on_meta():
    with torch.device("meta"):
        model = ConvMixer(8, 2, kernel_size=3, patch_size=2, num_classes=3)
    for mode in (False, True):
        assert model.train(mode)(torch.randn(2, 3, 8, 8, device="meta")).shape == (2, 3)


def test_jit_script_is_refused_pointing_to_compile_and_trace():
    swapped = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), plain_mixer_block(4, 3))
    assert swap_mixer_blocks(swapped) == 1
    plain = ConvMixer(8, 2, kernel_size=3, patch_size=2, num_classes=3, fused=False)
    for model, name in ((FusedMixerBlock(4, 3), "FusedMixerBlock"), (plain, "ConvMixer"),
                        (swapped, "FusedMixerBlock")):
        with pytest.raises(RuntimeError, match=rf"torch.jit.script does not support {name} .*use torch.compile\(model\), "
                                               r"or torch.jit.trace\(model, example_input\)"):
            torch.jit.script(model)
    # The advice holds: tracing works and gives the same output.
    model = ConvMixer(8, 2, kernel_size=3, patch_size=2, num_classes=3).eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes become constants, as intended
        traced = torch.jit.trace(model, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
