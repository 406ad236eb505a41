// A C interface to the cuda backend's launchers (csrc/cuda/mixer_block_cuda.h) built on
// the emulator, for the tests to call through ctypes on CPU tensors. The caller allocates
// every output and workspace, as csrc/cuda/binding.cpp does on a GPU.
//
// dtype: 0 float32, 1 float16, 2 bfloat16. geometry: N, C, H, W and their strides in
// elements. Each call returns its cudaError_t (0 on success); cme_last_error says more.
#include <cstdint>
#include <string>

#include "cuda/launch.cuh"
#include "cuda/mixer_block_cuda.h"
#include "emulator.h"

namespace {

using convmixer_kernels::Activation;
using convmixer_kernels::BackwardParams;
using convmixer_kernels::ForwardParams;
using convmixer_kernels::Geometry;
namespace kc = convmixer_kernels::cuda;

std::string g_error;

Geometry geometry(const int64_t* g, int k) {
  Geometry geo;
  geo.batch = g[0], geo.channels = g[1], geo.height = g[2], geo.width = g[3];
  geo.stride_n = g[4], geo.stride_c = g[5], geo.stride_h = g[6], geo.stride_w = g[7];
  geo.kernel_size = k;
  return geo;
}

// Calls f(T{}) for the dtype code; does nothing for an unknown one (the callers' results
// then keep their error values).
template <typename F>
void with_dtype(int dtype, F&& f) {
  switch (dtype) {
    case 0: f(float{}); break;
    case 1: f(__half{}); break;
    case 2: f(__nv_bfloat16{}); break;
  }
}

std::string g_refusal;  // why `explained` says the call now finishing was refused

int finish(cudaError_t err) {
  const std::string message = cuda_emu::take_message();
  if (err == cudaSuccess) {
    g_error.clear();
  } else {
    g_error = g_refusal.empty() ? std::string(cudaGetErrorString(err)) + ": " + message : g_refusal;
  }
  g_refusal.clear();
  return static_cast<int>(err);
}

// A launcher's result: where it is the bare cudaErrorInvalidValue with which a launcher
// refuses a call whose kernels need more shared memory than the emulated device gives a
// block, the reason, as csrc/cuda/binding.cpp's check_launch gives it.
template <typename T>
cudaError_t explained(cudaError_t err, const Geometry& g, kc::Call call) {
  if (err == cudaErrorInvalidValue) g_refusal = kc::shared_memory_shortfall<T>(g, call);
  return err;
}

ForwardParams forward_params(const int64_t* g, int k, int act, double eps, const void* x, const void* weight,
                             const void* bias, const void* gamma, const void* beta, void* y) {
  ForwardParams p{};
  p.g = geometry(g, k);
  p.act = static_cast<Activation>(act);
  p.eps = eps;
  p.x = x, p.weight = weight, p.bias = bias, p.gamma = gamma, p.beta = beta, p.y = y;
  return p;
}

}  // namespace

extern "C" {

void cme_configure(int device, int multiprocessors, int64_t smem_per_multiprocessor, int64_t smem_per_block_optin,
                   int order, uint64_t seed) {
  cuda_emu::Options options;
  options.device = device;
  options.multiprocessors = multiprocessors;
  options.smem_per_multiprocessor = static_cast<size_t>(smem_per_multiprocessor);
  options.smem_per_block_optin = static_cast<size_t>(smem_per_block_optin);
  options.order = order;
  options.seed = seed;
  cuda_emu::configure(options);
  g_error.clear();
}

const char* cme_last_error() { return g_error.c_str(); }

int cme_selftest(const char* name, int32_t* out) { return finish(kc::run_selftest(name, out)); }

uint64_t cme_attribute_calls() { return cuda_emu::attribute_calls(); }

// The training forward's ordered merge of Welford partials [slices][3][C] alone, for
// counts too large to reach through a whole forward on the emulator.
int cme_welford_finalize(const float* partial, int slices, int C, float* mean, float* var) {
  return finish(kc::launch_welford_finalize(partial, slices, C, mean, var, nullptr));
}

// Why the kernels cannot run a block of kernel size k on the emulated device, or "".
const char* cme_shared_memory_shortfall(int dtype, int k) {
  static std::string why;
  why.clear();
  with_dtype(dtype, [&](auto t) { why = kc::shared_memory_shortfall<decltype(t)>(k); });
  return why.c_str();
}

int64_t cme_forward_train_workspace(int dtype, const int64_t* g, int k) {
  int64_t bytes = -1;
  with_dtype(dtype, [&](auto t) { bytes = static_cast<int64_t>(kc::forward_train_workspace_bytes<decltype(t)>(geometry(g, k))); });
  return bytes;
}

int64_t cme_backward_workspace(int dtype, const int64_t* g, int k, int batch_stats) {
  int64_t bytes = -1;
  with_dtype(dtype, [&](auto t) {
    bytes = static_cast<int64_t>(kc::backward_workspace_bytes<decltype(t)>(geometry(g, k), batch_stats != 0));
  });
  return bytes;
}

int cme_forward_eval(int dtype, int channels_last, const int64_t* g, int k, int act, double eps, const void* x,
                     const void* weight, const void* bias, const void* gamma, const void* beta, const void* mean,
                     const void* var, void* y) {
  ForwardParams p = forward_params(g, k, act, eps, x, weight, bias, gamma, beta, y);
  p.mean_in = mean, p.var_in = var;
  cudaError_t err = cudaErrorInvalidValue;
  with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    err = explained<T>(channels_last ? kc::forward_eval<T, kc::Layout::kChannelsLast>(p, nullptr)
                                     : kc::forward_eval<T, kc::Layout::kNCHW>(p, nullptr),
                       p.g, kc::Call::kForwardEval);
  });
  return finish(err);
}

int cme_forward_train(int dtype, int channels_last, const int64_t* g, int k, int act, double eps, const void* x,
                      const void* weight, const void* bias, const void* gamma, const void* beta, void* mean,
                      void* var, void* y, void* workspace) {
  ForwardParams p = forward_params(g, k, act, eps, x, weight, bias, gamma, beta, y);
  p.mean_out = mean, p.var_out = var;
  cudaError_t err = cudaErrorInvalidValue;
  with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    err = explained<T>(channels_last ? kc::forward_train<T, kc::Layout::kChannelsLast>(p, workspace, nullptr)
                                     : kc::forward_train<T, kc::Layout::kNCHW>(p, workspace, nullptr),
                       p.g, kc::Call::kForwardTrain);
  });
  return finish(err);
}

int cme_backward(int dtype, int channels_last, const int64_t* g, int k, int act, double eps, int batch_stats,
                 const void* dy, const void* x, const void* weight, const void* bias, const void* gamma,
                 const void* mean, const void* var, void* dx, void* dweight, void* dbias, void* dgamma, void* dbeta,
                 void* workspace, void* dh) {
  BackwardParams p{};
  p.g = geometry(g, k);
  p.act = static_cast<Activation>(act);
  p.eps = eps;
  p.batch_stats = batch_stats != 0;
  p.dy = dy, p.x = x, p.weight = weight, p.bias = bias, p.gamma = gamma, p.mean = mean, p.var = var;
  p.dx = dx, p.dweight = dweight, p.dbias = dbias, p.dgamma = dgamma, p.dbeta = dbeta;
  cudaError_t err = cudaErrorInvalidValue;
  with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    err = explained<T>(channels_last ? kc::backward<T, kc::Layout::kChannelsLast>(p, workspace, dh, nullptr)
                                     : kc::backward<T, kc::Layout::kNCHW>(p, workspace, dh, nullptr),
                       p.g, kc::Call::kBackward);
  });
  return finish(err);
}

}  // extern "C"
