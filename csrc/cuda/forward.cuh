// The forward launchers (eval, training); forward_{f32,f16,bf16}.cu instantiate them per
// dtype, so the kernels of each dtype compile in parallel.
#pragma once

#include "launch.cuh"

namespace convmixer_kernels {
namespace cuda {

template <typename T>
size_t forward_train_workspace_bytes(const Geometry& g) {
  if (empty_problem(g)) return 0;
  const Plan p = make_plan<T>(g, Call::kForwardTrain);
  return static_cast<size_t>(p.slices) * 3 * g.channels * sizeof(float);
}

template <typename T>
TileArgs forward_args(const Plan& p, const InTile& t, const ForwardParams& fp, Layout layout) {
  TileArgs a = base_args<T>(p, fp.g, layout, t, fp.act, fp.eps);
  a.in = fp.x;
  a.weight = fp.weight;
  a.bias = fp.bias;
  a.gamma = static_cast<const float*>(fp.gamma);
  a.beta = static_cast<const float*>(fp.beta);
  return a;
}

template <typename T, Layout L>
cudaError_t forward_eval(const ForwardParams& fp, cudaStream_t stream) {
  if (!dense_in(fp.g, L)) return cudaErrorInvalidValue;
  if (empty_problem(fp.g)) return cudaSuccess;
  const Plan p = make_plan<T>(fp.g, Call::kForwardEval);
  if (p.unfit_pass) return cudaErrorInvalidValue;  // shared_memory_shortfall says why
  const InTile t = in_tile<T>(p, fp.g.kernel_size, (fp.g.kernel_size - 1) / 2);
  TileArgs a = forward_args<T>(p, t, fp, L);
  a.mean = static_cast<const float*>(fp.mean_in);
  a.var = static_cast<const float*>(fp.var_in);
  a.out = fp.y;
  set_vec<T>(a);
  return run_tile<T, Mode::kApply>(a, p, stream);
}

template <typename T, Layout L>
cudaError_t forward_train(const ForwardParams& fp, void* workspace, cudaStream_t stream) {
  if (!dense_in(fp.g, L)) return cudaErrorInvalidValue;
  if (empty_problem(fp.g)) return cudaSuccess;
  const Plan p = make_plan<T>(fp.g, Call::kForwardTrain);
  if (p.unfit_pass) return cudaErrorInvalidValue;  // shared_memory_shortfall says why
  // a slice's per-channel count must be exact in the kernels' float Welford (see common.cuh);
  // only beyond 65535 * 16384 tiles, far past any GPU's memory, would it not be
  if (static_cast<int64_t>(p.items_per_block) * p.TH * p.TW > (int64_t{1} << 24)) return cudaErrorInvalidValue;
  const InTile t = in_tile<T>(p, fp.g.kernel_size, (fp.g.kernel_size - 1) / 2);
  float* partial = static_cast<float*>(workspace);
  float* mean = static_cast<float*>(fp.mean_out);
  float* var = static_cast<float*>(fp.var_out);

  TileArgs stats = forward_args<T>(p, t, fp, L);
  stats.partial = partial;
  stats.q_count = 3;
  set_vec<T>(stats);
  cudaError_t err = run_tile<T, Mode::kStats>(stats, p, stream);
  if (err != cudaSuccess) return err;
  err = launch_welford_finalize(partial, p.slices, stats.C, mean, var, stream);
  if (err != cudaSuccess) return err;

  TileArgs apply = forward_args<T>(p, t, fp, L);
  apply.mean = mean;
  apply.var = var;
  apply.out = fp.y;
  set_vec<T>(apply);
  return run_tile<T, Mode::kApply>(apply, p, stream);
}

#define CONVMIXER_CUDA_INSTANTIATE_FORWARD(T)                                                              \
  template std::string shared_memory_shortfall<T>(const Geometry&, Call);                                  \
  template std::string shared_memory_shortfall<T>(int);                                                   \
  template size_t forward_train_workspace_bytes<T>(const Geometry&);                                       \
  template cudaError_t forward_eval<T, Layout::kNCHW>(const ForwardParams&, cudaStream_t);                 \
  template cudaError_t forward_eval<T, Layout::kChannelsLast>(const ForwardParams&, cudaStream_t);         \
  template cudaError_t forward_train<T, Layout::kNCHW>(const ForwardParams&, void*, cudaStream_t);         \
  template cudaError_t forward_train<T, Layout::kChannelsLast>(const ForwardParams&, void*, cudaStream_t);

}  // namespace cuda
}  // namespace convmixer_kernels
