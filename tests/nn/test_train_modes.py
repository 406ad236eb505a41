"""FusedMixerBlock as users train it: BatchNorm's own mode and flags (frozen-BN
fine-tuning, BN re-estimation), calls that fail or see an empty batch, hooks and
reparametrizations the swap must not drop, and double backward."""

import copy
import itertools

import pytest
import torch
from torch import nn

from convmixer_kernels import ConvMixer, FusedMixerBlock, swap_mixer_blocks
from convmixer_kernels.reference import Residual
from tests.harness.sync_worker import plain_block

BN_VARIANTS = {
    "default": {},
    "momentum_none": {"momentum": None},
    "no_running_stats": {"track_running_stats": False},
    "affine_false": {"affine": False},
}


def _plain(dim=6, k=3, act="gelu", dtype=torch.float64, **bn_kwargs):
    torch.manual_seed(0)
    return plain_block(dim, k, act, bn_kwargs, dtype)


def _set_modes(block, model_training, bn_training):
    block.train(model_training)
    block.fn[2].train(bn_training)


def _buffers(module):
    return {name: b.clone() for name, b in module.named_buffers()}


@pytest.mark.parametrize("backend", ["cpu", "eager"])
@pytest.mark.parametrize("variant", list(BN_VARIANTS))
@pytest.mark.parametrize("model_training,bn_training", list(itertools.product([True, False], repeat=2)),
                         ids=lambda v: "train" if v else "eval")
def test_block_follows_its_batchnorm_mode(backend, variant, model_training, bn_training):
    """model.train() with a frozen BN, model.eval() with a training BN (re-estimation), and
    the two plain combinations: several SGD steps against the eager block, comparing the
    outputs, every gradient, the running statistics and num_batches_tracked."""
    plain = _plain(**BN_VARIANTS[variant])
    fused = FusedMixerBlock.from_sequential(copy.deepcopy(plain).fn, backend=backend)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.1)
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.1)
    for step in range(3):
        _set_modes(plain, model_training, bn_training)
        _set_modes(fused, model_training, bn_training)
        x = torch.randn(3, 6, 7, 7, dtype=torch.float64)
        xp, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        yp, yf = plain(xp), fused(xf)
        torch.testing.assert_close(yf, yp, msg=f"step {step}: output")
        dy = torch.randn_like(yp)
        yp.backward(dy)
        yf.backward(dy)
        torch.testing.assert_close(xf.grad, xp.grad, msg=f"step {step}: input gradient")
        for (name, pp), pf in zip(plain.named_parameters(), fused.parameters()):
            torch.testing.assert_close(pf.grad, pp.grad, msg=f"step {step}: {name} gradient")
        for (name, bp), bf in zip(plain.named_buffers(), fused.buffers()):
            torch.testing.assert_close(bf, bp, rtol=0, atol=1e-12, msg=f"step {step}: {name}")
        opt_p.step(), opt_f.step(), opt_p.zero_grad(), opt_f.zero_grad()
    bn = fused.fn[2]
    if bn.track_running_stats:
        assert int(bn.num_batches_tracked) == (3 if bn_training else 0)


def test_frozen_bn_inside_a_training_model_keeps_running_stats():
    fused = FusedMixerBlock.from_sequential(_plain().fn, backend="cpu")
    _set_modes(fused, True, False)
    before = _buffers(fused)
    fused(torch.randn(2, 6, 5, 5, dtype=torch.float64))
    for name, value in _buffers(fused).items():
        assert torch.equal(value, before[name]), name


def test_failed_call_leaves_no_trace():
    fused = FusedMixerBlock.from_sequential(_plain().fn, backend="cpu")
    fused.train()
    before = _buffers(fused)
    with pytest.raises(ValueError, match="more than one value per channel"):
        fused(torch.randn(1, 6, 1, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="conv_weight"):
        fused(torch.randn(2, 5, 4, 4, dtype=torch.float64))
    for name, value in _buffers(fused).items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_is_empty_as_in_eager(training):
    plain = _plain()
    fused = FusedMixerBlock.from_sequential(copy.deepcopy(plain).fn, backend="cpu")
    plain.train(training), fused.train(training)
    x = torch.randn(0, 6, 5, 5, dtype=torch.float64)
    xp, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yp, yf = plain(xp), fused(xf)
    assert yf.shape == yp.shape == x.shape
    yp.sum().backward()
    yf.sum().backward()
    assert xf.grad.shape == x.shape
    for (name, pp), pf in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(pf.grad, pp.grad, msg=name)
    for (name, bp), bf in zip(plain.named_buffers(), fused.buffers()):
        assert torch.equal(bf, bp), name  # running stats unchanged, the batch counted as eager counts it


def _hooked(kind):
    block = _plain()
    conv, bn = block.fn[0], block.fn[2]
    if kind == "conv_forward_hook":
        conv.register_forward_hook(lambda m, i, o: None)
    elif kind == "bn_forward_pre_hook":
        bn.register_forward_pre_hook(lambda m, i: None)
    elif kind == "act_forward_hook":
        block.fn[1].register_forward_hook(lambda m, i, o: None)
    elif kind == "residual_forward_hook":
        block.register_forward_hook(lambda m, i, o: None)
    elif kind == "bn_backward_hook":
        bn.register_full_backward_hook(lambda m, gi, go: None)
    elif kind == "weight_norm":
        torch.nn.utils.weight_norm(conv)
    elif kind == "spectral_norm":
        torch.nn.utils.spectral_norm(conv)
    elif kind == "prune":
        torch.nn.utils.prune.l1_unstructured(conv, "weight", amount=0.3)
    return block


@pytest.mark.parametrize("kind,message", [
    ("conv_forward_hook", r"fn\[0\] carries a forward hook"),
    ("bn_forward_pre_hook", r"fn\[2\] carries a forward pre-hook"),
    ("act_forward_hook", r"fn\[1\] carries a forward hook"),
    ("residual_forward_hook", r"the residual block carries a forward hook"),
    ("bn_backward_hook", r"fn\[2\] carries a backward hook"),
    ("weight_norm", r"fn\[0\] carries an old-style weight_norm"),
    ("spectral_norm", r"fn\[0\] carries an old-style spectral_norm"),
    ("prune", r"fn\[0\] carries a pruning reparametrization"),
])
def test_swap_leaves_hooked_blocks_alone(kind, message):
    model = nn.Sequential(_hooked(kind), _plain()).eval()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    before = model(x)
    with pytest.warns(UserWarning, match=r"left '0' unswapped: " + message):
        assert swap_mixer_blocks(model, backend="cpu") == 1
    assert isinstance(model[0], Residual) and isinstance(model[1], FusedMixerBlock)
    torch.testing.assert_close(model(x), before)


def test_fused_block_refuses_hooks_added_after_the_swap():
    fused = FusedMixerBlock.from_sequential(_plain().fn, backend="cpu")
    fused.fn[0].register_forward_hook(lambda m, i, o: None)
    with pytest.raises(RuntimeError, match=r"fn\[0\] carries a forward hook.*unswap_mixer_blocks"):
        fused(torch.randn(2, 6, 5, 5, dtype=torch.float64))


@pytest.mark.parametrize("training", [True, False])
def test_double_backward_is_refused_at_the_first_backward(training):
    fused = FusedMixerBlock.from_sequential(_plain().fn, backend="cpu").train(training)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\) is not supported"):
        torch.autograd.grad(fused(x).square().sum(), x, create_graph=True)
    # A plain backward still works afterwards.
    fused(x).square().sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()


@pytest.mark.parametrize("model_training,bn_training", [(True, False), (False, True)],
                         ids=("frozen_bn_finetune", "bn_reestimation"))
def test_convmixer_with_its_batchnorms_in_the_other_mode(model_training, bn_training):
    torch.manual_seed(0)
    plain = ConvMixer(8, 2, kernel_size=3, patch_size=2, num_classes=4, fused=False).double()
    fused = ConvMixer(8, 2, kernel_size=3, patch_size=2, num_classes=4, backend="cpu").double()
    fused.load_state_dict(plain.state_dict())
    for model in (plain, fused):
        model.train(model_training)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train(bn_training)
    for step in range(2):
        x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
        yp, yf = plain(x), fused(x)
        torch.testing.assert_close(yf, yp, msg=f"step {step}")
        yp.square().sum().backward()
        yf.square().sum().backward()
        for (name, pp), pf in zip(plain.named_parameters(), fused.parameters()):
            torch.testing.assert_close(pf.grad, pp.grad, msg=f"step {step}: {name}")
    for (name, bp), bf in zip(plain.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(bf, bp, msg=name)


@pytest.mark.parametrize("training", [True, False])
def test_channels_last_weight_gradient_keeps_the_weight_strides(training):
    # A channels_last model's (C, 1, k, k) conv weight differs from the contiguous one in
    # the stride of its size-1 dimension; DDP's gradient buckets compare strides literally.
    fused = FusedMixerBlock.from_sequential(_plain().fn, backend="cpu").train(training)
    fused = fused.to(memory_format=torch.channels_last)
    weight = fused.fn[0].weight
    assert weight.is_contiguous() and weight.stride() == (9, 1, 3, 1)  # not (9, 9, 3, 1)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    fused(x).square().sum().backward()
    assert weight.grad.stride() == weight.stride()
