// The CPU registration of the kernel ops (schemas in csrc/ops.cpp): checks and params
// from bindings_common.h, then the active CPU capability level's passes (dispatch.cpp).
#include <torch/library.h>

#include "../bindings_common.h"
#include "mixer_block_cpu.h"

namespace convmixer_kernels {
namespace {

template <at::ScalarType S>
constexpr cpu::DType cpu_dtype() {
  if constexpr (S == at::kFloat) return cpu::DType::kFloat;
  if constexpr (S == at::kDouble) return cpu::DType::kDouble;
  if constexpr (S == at::kBFloat16) return cpu::DType::kBFloat16;
  return cpu::DType::kHalf;
}

// The active CPU capability level's passes for x's dtype (csrc/cpu/dispatch.cpp).
const cpu::Passes& cpu_passes(at::ScalarType dtype, const char* op) {
  const cpu::Passes* passes = nullptr;
  dispatch_dtype<at::kFloat, at::kDouble, at::kBFloat16, at::kHalf>(
      dtype, op, "", [&](auto tag) { passes = &cpu::kernels(cpu_dtype<decltype(tag)::value>()); });
  return *passes;
}

at::Tensor forward_eval_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
                            const at::Tensor& running_mean, const at::Tensor& running_var, double eps,
                            c10::string_view activation) {
  auto call = prepare_forward(x, weight, bias, gamma, beta, running_mean, running_var, eps,
                              std::string(activation), /*training=*/false);
  cpu_passes(x.scalar_type(), "_kernel_forward_eval").forward_eval(call.params);
  return call.y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_train_cpu(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, double eps,
    c10::string_view activation) {
  auto call = prepare_forward(x, weight, bias, gamma, beta, c10::nullopt, c10::nullopt, eps,
                              std::string(activation), /*training=*/true);
  cpu_passes(x.scalar_type(), "_kernel_forward_train").forward_train(call.params);
  return {call.y, call.mean, call.var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& gamma, const at::Tensor& mean,
    const at::Tensor& var, double eps, bool batch_stats, c10::string_view activation) {
  auto call = prepare_backward(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats,
                               std::string(activation));
  cpu_passes(x.scalar_type(), "_kernel_backward").backward(call.params);
  return {call.dx, call.dweight, call.dbias, call.dgamma, call.dbeta};
}

// Synchronized BatchNorm's pieces of the training passes (ops/sync.py runs the
// collectives between them): the statistics pass alone, the backward's sum pass alone,
// and the backward's apply passes given the sums and count over every process.
std::tuple<at::Tensor, at::Tensor> forward_stats_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                     const c10::optional<at::Tensor>& bias,
                                                     c10::string_view activation) {
  // eps only enters the apply pass, which does not run here; 1.0 passes the check.
  auto call = prepare_forward(x, weight, bias, c10::nullopt, c10::nullopt, c10::nullopt, c10::nullopt, 1.0,
                              std::string(activation), /*training=*/true);
  call.params.stats_only = true;
  call.params.y = nullptr;
  call.y = at::Tensor();  // never written: release it now
  cpu_passes(x.scalar_type(), "_kernel_forward_stats").forward_train(call.params);
  return {call.mean, call.var};
}

std::tuple<at::Tensor, at::Tensor> backward_sums_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                     const at::Tensor& weight,
                                                     const c10::optional<at::Tensor>& bias,
                                                     const at::Tensor& mean, const at::Tensor& var, double eps,
                                                     c10::string_view activation) {
  auto call = prepare_backward(grad_out, x, weight, bias, c10::nullopt, mean, var, eps, /*batch_stats=*/true,
                               std::string(activation));
  call.params.sums_only = true;
  call.params.dx = nullptr;
  call.dx = at::Tensor();  // never written: release it now
  cpu_passes(x.scalar_type(), "_kernel_backward_sums").backward(call.params);
  return {call.dbeta, call.dgamma};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_with_sums_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& gamma, const at::Tensor& mean,
    const at::Tensor& var, double eps, const at::Tensor& sum_dy, const at::Tensor& sum_dy_xhat, int64_t count,
    c10::string_view activation) {
  auto call = prepare_backward(grad_out, x, weight, bias, gamma, mean, var, eps, /*batch_stats=*/true,
                               std::string(activation));
  const auto acc = acc_dtype(x.scalar_type());
  check_channel_vector(sum_dy, "sum_dy", x, acc);
  check_channel_vector(sum_dy_xhat, "sum_dy_xhat", x, acc);
  TORCH_CHECK(count > 1, "mixer_block: count (values per channel over every process) must exceed 1, got ",
              count);
  call.params.sum_dy = sum_dy.data_ptr();
  call.params.sum_dy_xhat = sum_dy_xhat.data_ptr();
  call.params.count = count;
  cpu_passes(x.scalar_type(), "_kernel_backward_with_sums").backward(call.params);
  return {call.dx, call.dweight, call.dbias};
}

// The pointwise and stem blocks' BatchNorm over (rows, cols) matrices (column_stats.h).
void check_matrix(const at::Tensor& t, const char* name, const at::Tensor& u) {
  TORCH_CHECK(t.dim() == 2, "gemm_epilogue: ", name, " must be 2-D (rows, columns), got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16 ||
                  t.scalar_type() == at::kDouble,
              "gemm_epilogue: ", name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "gemm_epilogue: ", name, " must be a cpu tensor, got ", t.device());
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, "gemm_epilogue: ", name,
              " must have contiguous columns (stride 1 along dim 1), got strides ", t.strides());
  TORCH_CHECK(t.size(0) <= 1 || t.stride(0) >= t.size(1), "gemm_epilogue: ", name,
              " rows must not overlap, got strides ", t.strides(), " for shape ", t.sizes());
  if (&t != &u) {
    TORCH_CHECK(t.sizes() == u.sizes(), "gemm_epilogue: ", name, " must have the shape ", u.sizes(), ", got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == u.scalar_type(), "gemm_epilogue: ", name, " must have the dtype ",
                u.scalar_type(), ", got ", t.scalar_type());
  }
}

void check_column_vector(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& u) {
  if (!t.has_value()) return;
  const auto acc = acc_dtype(u.scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == u.size(1), "gemm_epilogue: ", name, " must have shape (", u.size(1),
              ",), got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == acc, "gemm_epilogue: ", name, " must be ", acc, ", got ", t->scalar_type());
  TORCH_CHECK(t->device().is_cpu(), "gemm_epilogue: ", name, " must be a cpu tensor, got ", t->device());
  TORCH_CHECK(t->is_contiguous(), "gemm_epilogue: ", name, " must be contiguous");
}

std::tuple<at::Tensor, at::Tensor> column_moments_cpu(const at::Tensor& u, const at::Tensor& v,
                                                      const c10::optional<at::Tensor>& u_center,
                                                      const c10::optional<at::Tensor>& v_center) {
  check_matrix(u, "u", u);
  check_matrix(v, "v", u);
  check_column_vector(u_center, "u_center", u);
  check_column_vector(v_center, "v_center", u);
  auto sum_u = at::empty({u.size(1)}, u.options().dtype(at::kDouble));
  auto sum_uv = at::empty({u.size(1)}, u.options().dtype(at::kDouble));
  cpu::ColumnMomentsParams p{u.size(0), u.size(1), u.data_ptr(), u.stride(0), v.data_ptr(), v.stride(0),
                             ptr_or_null(u_center), ptr_or_null(v_center), sum_u.data_ptr<double>(),
                             sum_uv.data_ptr<double>()};
  cpu_passes(u.scalar_type(), "_kernel_column_moments").column_moments(p);
  return {sum_u, sum_uv};
}

at::Tensor column_affine_cpu(const at::Tensor& v, const at::Tensor& v_center, const at::Tensor& v_scale,
                             const at::Tensor& shift, const c10::optional<at::Tensor>& u,
                             const c10::optional<at::Tensor>& u_scale) {
  check_matrix(v, "v", v);
  check_column_vector(v_center, "v_center", v);
  check_column_vector(v_scale, "v_scale", v);
  check_column_vector(shift, "shift", v);
  TORCH_CHECK(u.has_value() == u_scale.has_value(), "gemm_epilogue: u and u_scale must both be given or both be None");
  if (u.has_value()) check_matrix(*u, "u", v);
  check_column_vector(u_scale, "u_scale", v);
  auto out = at::empty(v.sizes(), v.options().memory_format(at::MemoryFormat::Contiguous));
  cpu::ColumnAffineParams p{v.size(0),          v.size(1),
                            v.data_ptr(),       v.stride(0),
                            v_center.data_ptr(), v_scale.data_ptr(),
                            shift.data_ptr(),   ptr_or_null(u),
                            u.has_value() ? u->stride(0) : 0, ptr_or_null(u_scale),
                            out.data_ptr()};
  cpu_passes(v.scalar_type(), "_kernel_column_affine").column_affine(p);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(convmixer_kernels, CPU, m) {
  m.impl("_kernel_forward_eval", &forward_eval_cpu);
  m.impl("_kernel_forward_train", &forward_train_cpu);
  m.impl("_kernel_backward", &backward_cpu);
  m.impl("_kernel_forward_stats", &forward_stats_cpu);
  m.impl("_kernel_backward_sums", &backward_sums_cpu);
  m.impl("_kernel_backward_with_sums", &backward_with_sums_cpu);
  m.impl("_kernel_column_moments", &column_moments_cpu);
  m.impl("_kernel_column_affine", &column_affine_cpu);
}

}  // namespace convmixer_kernels
