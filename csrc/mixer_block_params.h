// Plain parameter structs shared by the CPU kernels, the CUDA kernels and the torch
// bindings. No torch header here: csrc/cuda includes this file from .cu sources.
//
// The mixer block is y = x + BN(act(dwconv(x) + bias)). Every activation-sized tensor
// of one call (x, y, dy, dx) is allocated with one dense layout (NCHW or channels_last),
// so one Geometry (strides in elements) describes all of them.
#pragma once

#include <cstdint>

namespace convmixer_kernels {

enum class Activation : int32_t {
  kGelu = 0,      // exact: 0.5 x (1 + erf(x / sqrt 2))
  kGeluTanh = 1,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  kRelu = 2,
  kSilu = 3,
};

struct Geometry {
  int64_t batch;
  int64_t channels;
  int64_t height;
  int64_t width;
  int64_t stride_n;
  int64_t stride_c;
  int64_t stride_h;
  int64_t stride_w;
  // 'same' padding for stride 1, dilation 1: out[i] = sum_j w[j] * in[i + j - pad_before],
  // pad_before = (k - 1) / 2, so an even k pads one more after than before.
  int32_t kernel_size;

  bool channels_last() const { return stride_c == 1 && channels > 1; }
};

// Forward, both modes. scalar_t is the dtype of x, y, weight and bias; the per-channel
// vectors (gamma, beta, mean, var) are in the accumulation type acc_t (float, or double
// for double inputs).
struct ForwardParams {
  Geometry g;
  Activation act;
  double eps;
  const void* x;       // [N, C, H, W] scalar_t, strides from g
  const void* weight;  // [C, k, k] scalar_t, contiguous
  const void* bias;    // [C] scalar_t, or nullptr (conv without bias)
  const void* gamma;   // [C] acc_t, or nullptr (BN affine=False: gamma = 1)
  const void* beta;    // [C] acc_t, or nullptr (beta = 0)
  // Eval: the running statistics to normalize with (inputs).
  // Training: where the batch mean and biased batch variance are written (outputs).
  const void* mean_in;
  const void* var_in;
  void* mean_out;
  void* var_out;
  void* y;  // [N, C, H, W] scalar_t, strides from g
  // Training, CPU kernels: run the statistics pass only (mean_out, var_out; y is not
  // written), for synchronized BatchNorm, which merges the statistics of every process
  // before the apply pass.
  bool stats_only = false;
};

// Backward of either mode. With rstd = 1 / sqrt(var + eps), xhat = (a - mean) * rstd:
//   batch_stats:  da = gamma * rstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
//   otherwise:    da = gamma * rstd * dy   (eval mode, BN frozen)
// dh = da * act'(h); dx = dy + conv_transpose(dh).
struct BackwardParams {
  Geometry g;
  Activation act;
  double eps;
  bool batch_stats;
  const void* dy;      // scalar_t, strides from g
  const void* x;       // scalar_t, strides from g
  const void* weight;  // [C, k, k] scalar_t
  const void* bias;    // [C] scalar_t or nullptr
  const void* gamma;   // [C] acc_t or nullptr
  const void* mean;    // [C] acc_t: batch mean (training) or running mean (eval)
  const void* var;     // [C] acc_t: biased batch variance or running variance
  void* dx;            // scalar_t, strides from g
  void* dweight;       // [C, k, k] acc_t
  void* dbias;         // [C] acc_t
  void* dgamma;        // [C] acc_t
  void* dbeta;         // [C] acc_t
  // CPU kernels, synchronized BatchNorm (batch_stats only). sums_only: run the first
  // pass alone, writing the local sum(dy) to dbeta and sum(dy * xhat) to dgamma.
  // sum_dy / sum_dy_xhat ([C] acc_t, both or neither): skip the first pass and form da
  // from these sums over all processes with count the global N*H*W; dgamma and dbeta
  // are then not written.
  bool sums_only = false;
  const void* sum_dy = nullptr;
  const void* sum_dy_xhat = nullptr;
  int64_t count = 0;
};

constexpr int kMaxKernelSize = 31;

}  // namespace convmixer_kernels
