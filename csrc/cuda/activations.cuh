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
// each instantiation of f is straight-line code for one activation.
template <typename F>
__device__ __forceinline__ void with_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::kGeluTanh: f(ActGeluTanh{}); break;
    case Activation::kRelu: f(ActRelu{}); break;
    case Activation::kSilu: f(ActSilu{}); break;
    default: f(ActGelu{}); break;
  }
}

}  // namespace cuda
}  // namespace convmixer_kernels
