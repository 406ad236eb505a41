// The schemas of the kernel-level ops, one per pass group, and the extension module.
//
// The `_kernel_` prefix marks the layer: these are what the cpu and cuda backends call
// (convmixer_kernels/ops/backends/compiled.py); users call the custom ops
// convmixer_kernels::mixer_block_* of convmixer_kernels/ops/custom_ops.py, which add
// autograd, backend choice, autocast and the running-statistics update. Each backend
// registers its implementations beside its kernels: csrc/cpu/binding.cpp (CPU) and
// csrc/cuda/binding.cpp (CUDA).
#include <torch/extension.h>
#include <torch/library.h>

#include "bindings_common.h"
#include "cpu/mixer_block_cpu.h"

namespace convmixer_kernels {

#ifdef CONVMIXER_KERNELS_WITH_CUDA
// csrc/cuda/binding.cpp: why the cuda kernels cannot run a mixer block of kernel size k in
// dtype ("float32", "float16", "bfloat16") on CUDA device `device` (its shared memory per
// block), or "" where they can.
std::string cuda_shared_memory_shortfall(int64_t device, const std::string& dtype, int64_t kernel_size);
#endif

TORCH_LIBRARY(convmixer_kernels, m) {
  // y = x + BN(act(dwconv(x) + bias)) with BN frozen at (running_mean, running_var).
  m.def(
      "_kernel_forward_eval(Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, Tensor? beta, "
      "Tensor running_mean, Tensor running_var, float eps, str activation) -> Tensor");
  // The same with batch statistics; returns (y, batch mean, biased batch variance).
  m.def(
      "_kernel_forward_train(Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, Tensor? beta, "
      "float eps, str activation) -> (Tensor, Tensor, Tensor)");
  // Returns (dx, dweight, dbias, dgamma, dbeta); the last four in the accumulation dtype.
  m.def(
      "_kernel_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, "
      "Tensor mean, Tensor var, float eps, bool batch_stats, str activation) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Synchronized BatchNorm's pieces (CPU only): the batch mean and biased variance;
  // the backward's local (sum dy, sum dy * xhat); and (dx, dweight, dbias) given those
  // sums and the count N*H*W over every process.
  m.def("_kernel_forward_stats(Tensor x, Tensor weight, Tensor? bias, str activation) -> (Tensor, Tensor)");
  m.def(
      "_kernel_backward_sums(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor mean, Tensor var, "
      "float eps, str activation) -> (Tensor, Tensor)");
  m.def(
      "_kernel_backward_with_sums(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, "
      "Tensor mean, Tensor var, float eps, Tensor sum_dy, Tensor sum_dy_xhat, int count, str activation) "
      "-> (Tensor, Tensor, Tensor)");
  // The pointwise and stem blocks' BatchNorm over (rows, columns) matrices (CPU only;
  // convmixer_kernels/ops/gemm_epilogue_blocked.py), per column: in float64,
  // (sum(u - u_center), sum((u - u_center) * (v - v_center))); and
  // (v - v_center) * v_scale + shift (+ u * u_scale), BatchNorm's output or input gradient.
  m.def("_kernel_column_moments(Tensor u, Tensor v, Tensor? u_center, Tensor? v_center) -> (Tensor, Tensor)");
  m.def(
      "_kernel_column_affine(Tensor v, Tensor v_center, Tensor v_scale, Tensor shift, Tensor? u, Tensor? u_scale) "
      "-> Tensor");
}

}  // namespace convmixer_kernels

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "convmixer_kernels compiled kernels; the ops live in torch.ops.convmixer_kernels";
#ifdef CONVMIXER_KERNELS_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.def("cuda_shared_memory_shortfall", &convmixer_kernels::cuda_shared_memory_shortfall,
        "Why the cuda kernels cannot run a block of kernel size k in a dtype on a device, or ''");
#else
  m.attr("cuda_compiled") = false;
#endif
  // The numbering of enum class Activation, which convmixer_kernels/conventions.py must
  // match (tests/ops/test_conventions.py).
  pybind11::dict codes;
  for (const auto& [name, act] : convmixer_kernels::kActivationNames) codes[name] = static_cast<int>(act);
  m.attr("activation_codes") = codes;
  m.def("cpu_capability", &convmixer_kernels::cpu::capability,
        "The CPU kernels' capability level in use (baseline, avx2, avx512, ...)");
  m.def("cpu_capabilities", &convmixer_kernels::cpu::capabilities,
        "Every compiled capability level, best first, with whether this CPU runs it");
  m.def("_set_cpu_capability", &convmixer_kernels::cpu::set_capability,
        "Switches the CPU kernels to a compiled level this CPU runs (for tests)");
}
