"""The facts written once in convmixer_kernels/conventions.py agree with the compiled
kernels, and the backends read them from there."""

import torch

from convmixer_kernels import _extension, conventions, reference


def test_activation_codes_match_the_cpp_enum():
    ext = _extension.load()
    assert ext is not None, _extension.load_error()
    assert dict(ext.activation_codes) == conventions.ACTIVATION_CODES
    assert reference.ACTIVATIONS == conventions.ACTIVATIONS == tuple(conventions.ACTIVATION_CODES)


def test_layout_rule():
    x = torch.empty(2, 3, 4, 5)
    assert conventions.layout_of(x) == "nchw"
    assert conventions.layout_of(x.contiguous(memory_format=torch.channels_last)) == "channels_last"
    # dense in both (one channel, or a 1x1 image): NCHW, as the bindings read it
    assert conventions.layout_of(torch.empty(2, 1, 4, 5).contiguous(memory_format=torch.channels_last)) == "nchw"
    assert conventions.layout_of(torch.empty(2, 3, 1, 1).contiguous(memory_format=torch.channels_last)) == "nchw"
    sliced = x[:, :, ::2]
    try:
        conventions.layout_of(sliced)
        raise AssertionError("a sliced tensor has no dense layout")
    except ValueError as exc:
        assert "contiguous NCHW or channels_last" in str(exc)
    assert conventions.memory_format_of(sliced) == torch.contiguous_format
    assert conventions.memory_format_of(x.contiguous(memory_format=torch.channels_last)[:, :, ::2]) == torch.channels_last


def test_accumulation_dtype():
    assert conventions.acc_dtype(torch.float64) == torch.float64
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert conventions.acc_dtype(dtype) == torch.float32
