// What every backend's registration shares (csrc/cpu/binding.cpp, csrc/cuda/binding.cpp):
// input checks, tensor -> params conversion, the dtype dispatch and the layout rule.
// Each check names the argument and what was expected; nothing reaches a kernel with
// strides it does not handle.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#include <array>
#include <string>
#include <type_traits>
#include <utility>

#include "mixer_block_params.h"

namespace convmixer_kernels {

// The names the ops take; ops.cpp exports the table as _C.activation_codes.
inline constexpr std::array<std::pair<const char*, Activation>, 4> kActivationNames{{
    {"gelu", Activation::kGelu},
    {"gelu_tanh", Activation::kGeluTanh},
    {"relu", Activation::kRelu},
    {"silu", Activation::kSilu},
}};

inline Activation parse_activation(const std::string& name) {
  for (const auto& [known, act] : kActivationNames) {
    if (name == known) return act;
  }
  TORCH_CHECK(false, "mixer_block: activation must be one of 'gelu', 'gelu_tanh', 'relu', 'silu', got '",
              name, "'");
}

template <at::ScalarType S>
using ScalarTag = std::integral_constant<at::ScalarType, S>;

// Calls f(ScalarTag<dtype>{}) where dtype is one of Supported; otherwise an error naming
// the op, the dtypes it supports and `note` (where else the dtype runs). Each binding maps
// the tag to its kernels' element type.
template <at::ScalarType... Supported, typename F>
void dispatch_dtype(at::ScalarType dtype, const char* op, const char* note, F&& f) {
  const bool found = ((dtype == Supported ? (f(ScalarTag<Supported>{}), true) : false) || ...);
  if (!found) {
    std::string supported;
    ((supported += (supported.empty() ? "" : ", ") + std::string(c10::toString(Supported))), ...);
    TORCH_CHECK(false, op, ": the kernels support ", supported, ", got ", dtype, note);
  }
}

// Which kernels a dense x takes: a tensor dense in both layouts (C == 1, or H == W == 1)
// takes the NCHW ones, as convmixer_kernels/conventions.py's layout_of says.
inline bool uses_channels_last_kernels(const at::Tensor& x) { return !x.is_contiguous(); }

// float32 for reduced-precision inputs, float64 for float64 (gradcheck).
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool is_channels_last_dense(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline void check_activation_tensor(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 4, "mixer_block: ", name, " must be 4-D (N, C, H, W), got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf ||
                  t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kDouble,
              "mixer_block: ", name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  if (&t != &x) {
    TORCH_CHECK(t.sizes() == x.sizes(), "mixer_block: ", name, " must have the shape of x ", x.sizes(),
                ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "mixer_block: ", name, " must have x's dtype ",
                x.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "mixer_block: ", name, " must be on x's device ", x.device(),
                ", got ", t.device());
    TORCH_CHECK(t.strides() == x.strides(), "mixer_block: ", name,
                " must have the memory layout of x (strides ", x.strides(), "), got ", t.strides());
  } else {
    TORCH_CHECK(t.is_contiguous() || is_channels_last_dense(t),
                "mixer_block: x must be contiguous NCHW or channels_last; got strides ", t.strides(),
                " (call .contiguous() first)");
  }
}

inline void check_weight(const at::Tensor& weight, const at::Tensor& x) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1,
              "mixer_block: conv_weight must be depthwise, shape (C, 1, k, k), got ", weight.sizes());
  TORCH_CHECK(weight.size(0) == x.size(1), "mixer_block: conv_weight has ", weight.size(0),
              " output channels but x has ", x.size(1), " channels");
  const int64_t k = weight.size(2);
  TORCH_CHECK(weight.size(3) == k, "mixer_block: conv_weight must be square (C, 1, k, k), got ",
              weight.sizes());
  TORCH_CHECK(k >= 1 && k <= kMaxKernelSize, "mixer_block: kernel size must be in [1, ", kMaxKernelSize,
              "], got ", k);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "mixer_block: conv_weight dtype ",
              weight.scalar_type(), " must equal x dtype ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "mixer_block: conv_weight must be on x's device ", x.device(),
              ", got ", weight.device());
  TORCH_CHECK(weight.is_contiguous(), "mixer_block: conv_weight must be contiguous");
}

// A per-channel vector: conv bias (x's dtype) or a BN vector (the accumulation dtype).
inline void check_channel_vector(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                                 at::ScalarType dtype) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), "mixer_block: ", name, " must have shape (",
              x.size(1), ",), got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == dtype, "mixer_block: ", name, " must be ", dtype, ", got ",
              t->scalar_type());
  TORCH_CHECK(t->device() == x.device(), "mixer_block: ", name, " must be on x's device ", x.device(),
              ", got ", t->device());
  TORCH_CHECK(t->is_contiguous(), "mixer_block: ", name, " must be contiguous");
}

inline Geometry make_geometry(const at::Tensor& x, const at::Tensor& weight) {
  Geometry g;
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  g.stride_n = x.stride(0);
  g.stride_c = x.stride(1);
  g.stride_h = x.stride(2);
  g.stride_w = x.stride(3);
  g.kernel_size = static_cast<int32_t>(weight.size(2));
  return g;
}

inline const void* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr() : nullptr;
}

struct ForwardCall {
  ForwardParams params;
  at::Tensor y, mean, var;
};

// Checks the forward inputs and allocates the outputs. mean/var are inputs in eval
// (running statistics) and are allocated here as outputs in training.
inline ForwardCall prepare_forward(const at::Tensor& x, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& gamma,
                                   const c10::optional<at::Tensor>& beta,
                                   const c10::optional<at::Tensor>& running_mean,
                                   const c10::optional<at::Tensor>& running_var, double eps,
                                   const std::string& activation, bool training) {
  check_activation_tensor(x, "x", x);
  check_weight(weight, x);
  const auto acc = acc_dtype(x.scalar_type());
  check_channel_vector(bias, "conv_bias", x, x.scalar_type());
  check_channel_vector(gamma, "bn_weight", x, acc);
  check_channel_vector(beta, "bn_bias", x, acc);
  TORCH_CHECK(eps > 0, "mixer_block: eps must be positive, got ", eps);
  ForwardCall call;
  ForwardParams& p = call.params;
  p.g = make_geometry(x, weight);
  p.act = parse_activation(activation);
  p.eps = eps;
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null(bias);
  p.gamma = ptr_or_null(gamma);
  p.beta = ptr_or_null(beta);
  p.mean_in = p.var_in = nullptr;
  p.mean_out = p.var_out = nullptr;
  call.y = at::empty_like(x);
  p.y = call.y.data_ptr();
  if (training) {
    TORCH_CHECK(x.size(0) * x.size(2) * x.size(3) > 1,
                "mixer_block: training needs more than one value per channel, got x of shape ", x.sizes());
    call.mean = at::empty({x.size(1)}, x.options().dtype(acc));
    call.var = at::empty({x.size(1)}, x.options().dtype(acc));
    p.mean_out = call.mean.data_ptr();
    p.var_out = call.var.data_ptr();
  } else {
    TORCH_CHECK(running_mean.has_value() && running_var.has_value(),
                "mixer_block: eval mode needs running_mean and running_var");
    check_channel_vector(running_mean, "running_mean", x, acc);
    check_channel_vector(running_var, "running_var", x, acc);
    p.mean_in = running_mean->data_ptr();
    p.var_in = running_var->data_ptr();
  }
  return call;
}

struct BackwardCall {
  BackwardParams params;
  at::Tensor dx, dweight, dbias, dgamma, dbeta;
};

inline BackwardCall prepare_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias,
                                     const c10::optional<at::Tensor>& gamma, const at::Tensor& mean,
                                     const at::Tensor& var, double eps, bool batch_stats,
                                     const std::string& activation) {
  check_activation_tensor(x, "x", x);
  check_activation_tensor(dy, "grad_out", x);
  check_weight(weight, x);
  const auto acc = acc_dtype(x.scalar_type());
  check_channel_vector(bias, "conv_bias", x, x.scalar_type());
  check_channel_vector(gamma, "bn_weight", x, acc);
  check_channel_vector(mean, "mean", x, acc);
  check_channel_vector(var, "var", x, acc);
  TORCH_CHECK(eps > 0, "mixer_block: eps must be positive, got ", eps);
  BackwardCall call;
  BackwardParams& p = call.params;
  p.g = make_geometry(x, weight);
  p.act = parse_activation(activation);
  p.eps = eps;
  p.batch_stats = batch_stats;
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null(bias);
  p.gamma = ptr_or_null(gamma);
  p.mean = mean.data_ptr();
  p.var = var.data_ptr();
  const auto vec_options = x.options().dtype(acc);
  call.dx = at::empty_like(x);
  call.dweight = at::empty(weight.sizes(), vec_options);
  call.dbias = at::empty({x.size(1)}, vec_options);
  call.dgamma = at::empty({x.size(1)}, vec_options);
  call.dbeta = at::empty({x.size(1)}, vec_options);
  p.dx = call.dx.data_ptr();
  p.dweight = call.dweight.data_ptr();
  p.dbias = call.dbias.data_ptr();
  p.dgamma = call.dgamma.data_ptr();
  p.dbeta = call.dbeta.data_ptr();
  return call;
}

}  // namespace convmixer_kernels
