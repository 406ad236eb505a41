// The op schema of the fused mixer-block kernels and their CPU registration.
//
// These are the kernel-level ops, one per pass group; the Python package wraps them in
// the user-facing custom ops (autograd, backend choice, autocast, running-stat update).
#include <torch/extension.h>
#include <torch/library.h>

#include "bindings_common.h"
#include "cpu/mixer_block_cpu.h"

namespace convmixer_kernels {
namespace {

// The active CPU capability level's passes for x's dtype (csrc/cpu/dispatch.cpp).
const cpu::Passes& cpu_passes(at::ScalarType dtype, const char* op) {
  switch (dtype) {
    case at::kFloat:
      return cpu::kernels(cpu::DType::kFloat);
    case at::kDouble:
      return cpu::kernels(cpu::DType::kDouble);
    case at::kBFloat16:
      return cpu::kernels(cpu::DType::kBFloat16);
    case at::kHalf:
      return cpu::kernels(cpu::DType::kHalf);
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", dtype);
  }
}

at::Tensor forward_eval_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
                            const at::Tensor& running_mean, const at::Tensor& running_var, double eps,
                            c10::string_view activation) {
  auto call = prepare_forward(x, weight, bias, gamma, beta, running_mean, running_var, eps,
                              std::string(activation), /*training=*/false);
  cpu_passes(x.scalar_type(), "fused_forward_eval").forward_eval(call.params);
  return call.y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_train_cpu(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, double eps,
    c10::string_view activation) {
  auto call = prepare_forward(x, weight, bias, gamma, beta, c10::nullopt, c10::nullopt, eps,
                              std::string(activation), /*training=*/true);
  cpu_passes(x.scalar_type(), "fused_forward_train").forward_train(call.params);
  return {call.y, call.mean, call.var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& gamma, const at::Tensor& mean,
    const at::Tensor& var, double eps, bool batch_stats, c10::string_view activation) {
  auto call = prepare_backward(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats,
                               std::string(activation));
  cpu_passes(x.scalar_type(), "fused_backward").backward(call.params);
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
  cpu_passes(x.scalar_type(), "fused_forward_stats").forward_train(call.params);
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
  cpu_passes(x.scalar_type(), "fused_backward_sums").backward(call.params);
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
  cpu_passes(x.scalar_type(), "fused_backward_with_sums").backward(call.params);
  return {call.dx, call.dweight, call.dbias};
}

}  // namespace

TORCH_LIBRARY(convmixer_kernels, m) {
  // y = x + BN(act(dwconv(x) + bias)) with BN frozen at (running_mean, running_var).
  m.def(
      "fused_forward_eval(Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, Tensor? beta, "
      "Tensor running_mean, Tensor running_var, float eps, str activation) -> Tensor");
  // The same with batch statistics; returns (y, batch mean, biased batch variance).
  m.def(
      "fused_forward_train(Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, Tensor? beta, "
      "float eps, str activation) -> (Tensor, Tensor, Tensor)");
  // Returns (dx, dweight, dbias, dgamma, dbeta); the last four in the accumulation dtype.
  m.def(
      "fused_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, "
      "Tensor mean, Tensor var, float eps, bool batch_stats, str activation) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Synchronized BatchNorm's pieces (CPU only): the batch mean and biased variance;
  // the backward's local (sum dy, sum dy * xhat); and (dx, dweight, dbias) given those
  // sums and the count N*H*W over every process.
  m.def("fused_forward_stats(Tensor x, Tensor weight, Tensor? bias, str activation) -> (Tensor, Tensor)");
  m.def(
      "fused_backward_sums(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor mean, Tensor var, "
      "float eps, str activation) -> (Tensor, Tensor)");
  m.def(
      "fused_backward_with_sums(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, "
      "Tensor mean, Tensor var, float eps, Tensor sum_dy, Tensor sum_dy_xhat, int count, str activation) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(convmixer_kernels, CPU, m) {
  m.impl("fused_forward_eval", &forward_eval_cpu);
  m.impl("fused_forward_train", &forward_train_cpu);
  m.impl("fused_backward", &backward_cpu);
  m.impl("fused_forward_stats", &forward_stats_cpu);
  m.impl("fused_backward_sums", &backward_sums_cpu);
  m.impl("fused_backward_with_sums", &backward_with_sums_cpu);
}

}  // namespace convmixer_kernels

#ifndef CONVMIXER_KERNELS_CUDA_ARCH_LIST
#define CONVMIXER_KERNELS_CUDA_ARCH_LIST ""
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "convmixer_kernels compiled kernels; the ops live in torch.ops.convmixer_kernels";
#ifdef CONVMIXER_KERNELS_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.attr("cuda_archs") = CONVMIXER_KERNELS_CUDA_ARCH_LIST;
  m.def("cpu_capability", &convmixer_kernels::cpu::capability,
        "The CPU kernels' capability level in use (baseline, avx2, avx512, ...)");
  m.def("cpu_capabilities", &convmixer_kernels::cpu::capabilities,
        "Every compiled capability level, best first, with whether this CPU runs it");
  m.def("_set_cpu_capability", &convmixer_kernels::cpu::set_capability,
        "Switches the CPU kernels to a compiled level this CPU runs (for tests)");
}
