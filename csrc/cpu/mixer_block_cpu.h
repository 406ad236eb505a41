// The fused CPU kernels of the mixer block (OpenMP over planes, SIMD inner loops).
// Instantiated for float, double, c10::BFloat16 and c10::Half in mixer_block_cpu.cpp;
// the accumulation type is double for double and float otherwise.
//
// Every result is independent of the number of OpenMP threads: per-plane partial sums
// are merged in a fixed order.
#pragma once

#include "../mixer_block_params.h"

namespace convmixer_kernels {
namespace cpu {

// Eval: y = x + act(dwconv(x) + b) * s + t with s = gamma * rsqrt(var_in + eps),
// t = beta - mean_in * s. One pass.
template <typename scalar_t>
void forward_eval(const ForwardParams& p);

// Training: pass 1 reduces the per-channel mean and biased variance of a = act(h)
// (Welford per plane, Chan merge across planes) into mean_out / var_out; pass 2
// recomputes a and writes y = x + (a - mean) * rstd * gamma + beta.
template <typename scalar_t>
void forward_train(const ForwardParams& p);

// Backward (see BackwardParams): pass 1 reduces dbeta and dgamma; pass 2 recomputes h,
// forms dh and reduces dbias and dweight; pass 3 writes dx = dy + conv_transpose(dh).
template <typename scalar_t>
void backward(const BackwardParams& p);

}  // namespace cpu
}  // namespace convmixer_kernels
