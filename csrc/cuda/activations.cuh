// The four activations of the mixer block and their derivatives, in float, written as
// torch's CUDA kernels write them so that NaN and +-inf come out as in eager:
// gelu(-inf) = NaN, relu(NaN) = NaN, and the relu gradient at NaN passes the incoming
// gradient (threshold_backward tests result <= 0).
//
// Act::fwd(h) = act(h); Act::fwd_grad(h, &d) returns act(h) and sets d = act'(h),
// sharing the transcendental between the two.
#pragma once

#include "../mixer_block_params.h"
#include "platform.cuh"

namespace convmixer_kernels {
namespace cuda {

struct ActGelu {
  static constexpr float kSqrt1_2 = 0.70710678118654752440f;
  static constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
  static __device__ __forceinline__ float fwd(float h) { return 0.5f * h * (1.0f + erff(h * kSqrt1_2)); }
  static __device__ __forceinline__ float fwd_grad(float h, float* d) {
    const float cdf = 0.5f * (1.0f + erff(h * kSqrt1_2));
    *d = cdf + h * expf(-0.5f * h * h) * kInvSqrt2Pi;
    return h * cdf;
  }
};

// GELU for 16-bit outputs, cheaper than erff (about 14 instructions instead of about 30):
// Phi(h) from Abramowitz & Stegun 7.1.26, erf(z) = 1 - t (a1 + t (a2 + ... + t a5)) e^(-z^2)
// with t = 1 / (1 + p z), z = |h| / sqrt 2, |erf error| <= 1.5e-7, the reciprocal and the
// exponential on the MUFU unit. Against erf-GELU in float64 it errs by at most 2.1e-7 in
// float64 arithmetic and 6.4e-7 in float32 (|h| <= 12, a grid of 2e6 points), under 1/1000
// of a float16 ulp at 1 and far under a bfloat16 one, so the 16-bit parity bounds hold;
// float32 keeps erff. gelu(+-inf) and NaN come out as in eager (q = 0 at |h| = inf).
// The gradient (backward) stays the exact one.
struct ActGeluFast : ActGelu {
  static constexpr float kP = 0.3275911f;
  // A&S's a1..a5, halved: q below is 1 - Phi(|h|)
  static constexpr float kA1 = 0.5f * 0.254829592f, kA2 = 0.5f * -0.284496736f, kA3 = 0.5f * 1.421413741f;
  static constexpr float kA4 = 0.5f * -1.453152027f, kA5 = 0.5f * 1.061405429f;
  static constexpr float kNegHalfLog2e = -0.72134752044448170368f;  // e^(-h^2 / 2) = 2^(h^2 * this)
  static __device__ __forceinline__ float fwd(float h) {
    const float t = rcp_approx(fmaf(kP * kSqrt1_2, fabsf(h), 1.0f));
    const float poly = t * fmaf(t, fmaf(t, fmaf(t, fmaf(t, kA5, kA4), kA3), kA2), kA1);
    const float q = poly * exp2_approx(h * h * kNegHalfLog2e);
    return h * (h >= 0.0f ? 1.0f - q : q);
  }
};

struct ActGeluTanh {
  static constexpr float kBeta = 0.79788456080286535588f;  // sqrt(2 / pi)
  static constexpr float kKappa = 0.044715f;
  static __device__ __forceinline__ float fwd(float h) {
    return 0.5f * h * (1.0f + tanhf(kBeta * (h + kKappa * h * h * h)));
  }
  static __device__ __forceinline__ float fwd_grad(float h, float* d) {
    const float h2 = h * h;
    const float t = tanhf(kBeta * (h + kKappa * h2 * h));
    *d = 0.5f * (1.0f + t) + 0.5f * h * (1.0f - t * t) * kBeta * (1.0f + 3.0f * kKappa * h2);
    return 0.5f * h * (1.0f + t);
  }
};

struct ActRelu {
  // h <= 0 is false for NaN, which passes through as in torch.relu.
  static __device__ __forceinline__ float fwd(float h) { return h <= 0.0f ? 0.0f : h; }
  static __device__ __forceinline__ float fwd_grad(float h, float* d) {
    *d = h <= 0.0f ? 0.0f : 1.0f;
    return fwd(h);
  }
};

struct ActSilu {
  static __device__ __forceinline__ float fwd(float h) { return h / (1.0f + expf(-h)); }
  static __device__ __forceinline__ float fwd_grad(float h, float* d) {
    const float s = 1.0f / (1.0f + expf(-h));
    *d = s * (1.0f + h * (1.0f - s));
    return h * s;
  }
};

// Calls f(ActX{}) for the runtime activation; the branch is uniform across the grid, so
// each instantiation of f is straight-line code for one activation. FAST_GELU (16-bit
// outputs): GELU's forward is ActGeluFast's.
template <bool FAST_GELU, typename F>
__device__ __forceinline__ void with_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::kGeluTanh: f(ActGeluTanh{}); break;
    case Activation::kRelu: f(ActRelu{}); break;
    case Activation::kSilu: f(ActSilu{}); break;
    default:
      if constexpr (FAST_GELU) {
        f(ActGeluFast{});
      } else {
        f(ActGelu{});
      }
      break;
  }
}

}  // namespace cuda
}  // namespace convmixer_kernels
