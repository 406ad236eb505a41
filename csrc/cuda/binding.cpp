// The CUDA registration of the kernel ops (schemas in csrc/ops.cpp): checks and params
// from bindings_common.h, outputs and workspaces allocated on x's device, the launch on
// the current stream of that device, and a launch check after every launcher.
//
// The kernels in csrc/cuda see no torch type: at::Half and at::BFloat16 data are passed
// as __half and __nv_bfloat16 (the same 16 bits), float as float.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "../bindings_common.h"
#include "mixer_block_cuda.h"

namespace convmixer_kernels {
namespace {

// The kernels' element type of a dtype: the same bits, CUDA's own 16-bit types.
template <at::ScalarType S>
using KernelType = std::conditional_t<S == at::kFloat, float,
                                      std::conditional_t<S == at::kHalf, __half, __nv_bfloat16>>;

// Calls f(ScalarTag<dtype>{}) for x's dtype; f takes KernelType<decltype(tag)::value>.
template <typename F>
void dispatch_cuda_dtype(const at::Tensor& x, const char* op, F&& f) {
  dispatch_dtype<at::kFloat, at::kHalf, at::kBFloat16>(
      x.scalar_type(), op, " (float64 runs on the cpu and eager backends)", std::forward<F>(f));
}

void check_cuda(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": the cuda kernels need CUDA tensors, got x on ", x.device());
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// check_launch for a launcher of `call`: a launcher refuses a call whose kernels need more
// shared memory than the device gives a block with a bare cudaErrorInvalidValue, before
// launching anything; only then is the call planned again, for the pass and both sizes.
template <typename T>
void check_launch(cudaError_t err, const Geometry& g, cuda::Call call, const char* op) {
  if (err == cudaErrorInvalidValue) {
    const std::string why = cuda::shared_memory_shortfall<T>(g, call);
    TORCH_CHECK(why.empty(), op, ": ", why);
  }
  check_launch(err, op);
}

at::Tensor workspace(size_t bytes, const at::Tensor& x) {
  return at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}

at::Tensor forward_eval_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                             const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
                             const at::Tensor& running_mean, const at::Tensor& running_var, double eps,
                             c10::string_view activation) {
  constexpr const char* op = "_kernel_forward_eval";
  check_cuda(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  auto call = prepare_forward(x, weight, bias, gamma, beta, running_mean, running_var, eps, std::string(activation),
                              /*training=*/false);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  dispatch_cuda_dtype(x, op, [&](auto tag) {
    using T = KernelType<decltype(tag)::value>;
    check_launch<T>(uses_channels_last_kernels(x) ? cuda::forward_eval<T, cuda::Layout::kChannelsLast>(call.params, stream)
                                  : cuda::forward_eval<T, cuda::Layout::kNCHW>(call.params, stream),
                 call.params.g, cuda::Call::kForwardEval, op);
  });
  return call.y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_train_cuda(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, double eps,
    c10::string_view activation) {
  constexpr const char* op = "_kernel_forward_train";
  check_cuda(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  auto call = prepare_forward(x, weight, bias, gamma, beta, c10::nullopt, c10::nullopt, eps, std::string(activation),
                              /*training=*/true);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  dispatch_cuda_dtype(x, op, [&](auto tag) {
    using T = KernelType<decltype(tag)::value>;
    const at::Tensor ws = workspace(cuda::forward_train_workspace_bytes<T>(call.params.g), x);
    check_launch<T>(uses_channels_last_kernels(x)
                     ? cuda::forward_train<T, cuda::Layout::kChannelsLast>(call.params, ws.data_ptr(), stream)
                     : cuda::forward_train<T, cuda::Layout::kNCHW>(call.params, ws.data_ptr(), stream),
                 call.params.g, cuda::Call::kForwardTrain, op);
  });
  return {call.y, call.mean, call.var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& gamma, const at::Tensor& mean, const at::Tensor& var, double eps,
    bool batch_stats, c10::string_view activation) {
  constexpr const char* op = "_kernel_backward";
  check_cuda(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  auto call = prepare_backward(grad_out, x, weight, bias, gamma, mean, var, eps, batch_stats, std::string(activation));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  dispatch_cuda_dtype(x, op, [&](auto tag) {
    using T = KernelType<decltype(tag)::value>;
    const at::Tensor ws = workspace(cuda::backward_workspace_bytes<T>(call.params.g, batch_stats), x);
    at::Tensor dh = at::empty_like(x);  // x's strides: the kernels read it back with its halo
    check_launch<T>(uses_channels_last_kernels(x) ? cuda::backward<T, cuda::Layout::kChannelsLast>(call.params, ws.data_ptr(),
                                                                                   dh.data_ptr(), stream)
                                  : cuda::backward<T, cuda::Layout::kNCHW>(call.params, ws.data_ptr(),
                                                                           dh.data_ptr(), stream),
                 call.params.g, cuda::Call::kBackward, op);
  });
  return {call.dx, call.dweight, call.dbias, call.dgamma, call.dbeta};
}

}  // namespace

std::string cuda_shared_memory_shortfall(int64_t device, const std::string& dtype, int64_t kernel_size) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const int k = static_cast<int>(kernel_size);
  if (dtype == "float32") return cuda::shared_memory_shortfall<float>(k);
  if (dtype == "float16") return cuda::shared_memory_shortfall<__half>(k);
  TORCH_CHECK(dtype == "bfloat16", "cuda_shared_memory_shortfall: the cuda kernels have no dtype ", dtype);
  return cuda::shared_memory_shortfall<__nv_bfloat16>(k);
}

TORCH_LIBRARY_IMPL(convmixer_kernels, CUDA, m) {
  m.impl("_kernel_forward_eval", &forward_eval_cuda);
  m.impl("_kernel_forward_train", &forward_train_cuda);
  m.impl("_kernel_backward", &backward_cuda);
}

}  // namespace convmixer_kernels
