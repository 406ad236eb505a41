"""The four activations of the mixer block and their derivatives, as Triton device
functions on float32 values. ACT is a compile-time code, conventions.ACTIVATION_CODES
(the numbering of csrc/mixer_block_params.h).

The constants are written as literals: 0.7071067811865476 = 1/sqrt(2),
0.3989422804014327 = 1/sqrt(2 pi), 0.7978845608028654 = sqrt(2/pi), 0.044715 the
tanh-approximation's cubic coefficient. (Module-level tl.constexpr constants break
tl.sigmoid under the interpreter in triton 3.9.)"""

import triton
import triton.language as tl

from ..conventions import ACTIVATION_CODES

GELU = ACTIVATION_CODES["gelu"]
GELU_TANH = ACTIVATION_CODES["gelu_tanh"]
RELU = ACTIVATION_CODES["relu"]
SILU = ACTIVATION_CODES["silu"]


@triton.jit
def _tanh(u):
    # tanh through the sigmoid: saturates to +-1 without overflow, and exists both in
    # the compiler and in the interpreter (libdevice's tanh has no interpreter twin).
    return 2.0 * tl.sigmoid(2.0 * u) - 1.0


@triton.jit
def act_forward(h, ACT: tl.constexpr):
    """act(h)."""
    if ACT == 0:
        a = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    elif ACT == 1:
        a = 0.5 * h * (1.0 + _tanh(0.7978845608028654 * (h + 0.044715 * h * h * h)))
    elif ACT == 2:
        # Written so that NaN passes through as in torch.relu (NaN < 0 is false).
        a = tl.where(h < 0.0, 0.0, h)
    else:
        a = h * tl.sigmoid(h)
    return a


@triton.jit
def act_forward_and_grad(h, ACT: tl.constexpr):
    """(act(h), act'(h)), sharing the transcendental between the two."""
    if ACT == 0:
        cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
        a = h * cdf
        da = cdf + h * (0.3989422804014327 * tl.exp(-0.5 * h * h))
    elif ACT == 1:
        t = _tanh(0.7978845608028654 * (h + 0.044715 * h * h * h))
        a = 0.5 * h * (1.0 + t)
        da = 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * h * h)
    elif ACT == 2:
        a = tl.where(h < 0.0, 0.0, h)
        # torch's relu backward passes the gradient where the output is positive.
        da = tl.where(a > 0.0, 1.0, 0.0)
    else:
        s = tl.sigmoid(h)
        a = h * s
        da = s * (1.0 + h * (1.0 - s))
    return a, da
