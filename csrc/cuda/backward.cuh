// The backward launcher; backward_{f32,f16,bf16}.cu instantiate it per dtype.
//
//   batch statistics:  sums (dy, dy * xhat) -> dbeta, dgamma
//   both modes:        dh = da * act'(h) to the dh buffer, partials of dweight, dbias
//                      (and of dbeta, dgamma when BN is frozen) -> ordered sums
//                      dx = dy + conv_transpose(dh), reading dh with its halo
#pragma once

#include "launch.cuh"

namespace convmixer_kernels {
namespace cuda {

// Partial rows of the dh pass: k*k dweight taps, dbias, then (frozen BN) dbeta, dgamma.
inline int grad_h_rows(int k, bool batch_stats) { return k * k + 1 + (batch_stats ? 0 : 2); }

template <typename T>
size_t backward_workspace_bytes(const Geometry& g, bool batch_stats) {
  if (empty_problem(g)) return 0;
  const Plan p = make_plan<T>(g, Call::kBackward);
  // the dh pass's rows; the sums pass before it reuses the space for its 2
  return static_cast<size_t>(p.slices) * grad_h_rows(g.kernel_size, batch_stats) * g.channels * sizeof(float);
}

template <typename T, Layout L>
cudaError_t backward(const BackwardParams& bp, void* workspace, void* dh, cudaStream_t stream) {
  const Geometry& g = bp.g;
  if (!dense_in(g, L)) return cudaErrorInvalidValue;
  const int C = static_cast<int>(g.channels);
  const int k = g.kernel_size;
  float* dweight = static_cast<float*>(bp.dweight);
  float* dbias = static_cast<float*>(bp.dbias);
  float* dgamma = static_cast<float*>(bp.dgamma);
  float* dbeta = static_cast<float*>(bp.dbeta);
  if (empty_problem(g)) {
    // sums over no elements
    if (C == 0) return cudaSuccess;
    cudaMemsetAsync(dweight, 0, sizeof(float) * C * k * k, stream);
    cudaMemsetAsync(dbias, 0, sizeof(float) * C, stream);
    cudaMemsetAsync(dgamma, 0, sizeof(float) * C, stream);
    cudaMemsetAsync(dbeta, 0, sizeof(float) * C, stream);
    return cudaGetLastError();
  }
  const Plan p = make_plan<T>(g, Call::kBackward);
  if (p.unfit_pass) return cudaErrorInvalidValue;  // shared_memory_shortfall says why
  const int left = (k - 1) / 2;
  const InTile t = in_tile<T>(p, k, left);
  float* partial = static_cast<float*>(workspace);

  TileArgs a = base_args<T>(p, g, L, t, bp.act, bp.eps);
  a.in = bp.x;
  a.aux = bp.dy;
  a.weight = bp.weight;
  a.bias = bp.bias;
  a.gamma = static_cast<const float*>(bp.gamma);
  a.mean = static_cast<const float*>(bp.mean);
  a.var = static_cast<const float*>(bp.var);
  a.batch_stats = bp.batch_stats;
  a.inv_count = static_cast<float>(1.0 / (static_cast<double>(g.batch) * g.height * g.width));
  a.partial = partial;
  cudaError_t err;

  if (bp.batch_stats) {
    TileArgs sums = a;
    sums.q_count = 2;
    set_vec<T>(sums);
    err = run_tile<T, Mode::kGradSums>(sums, p, stream);
    if (err != cudaSuccess) return err;
    float* const rows[3] = {dbeta, dgamma, nullptr};
    err = launch_sum_partials(partial, p.slices, 2, C, 0, nullptr, rows, stream);
    if (err != cudaSuccess) return err;
  }

  TileArgs gh = a;
  gh.out = dh;
  gh.dbeta = dbeta;
  gh.dgamma = dgamma;
  gh.q_count = grad_h_rows(k, bp.batch_stats);
  set_vec<T>(gh);
  err = run_tile<T, Mode::kGradH>(gh, p, stream);
  if (err != cudaSuccess) return err;
  float* const rows[3] = {dbias, bp.batch_stats ? nullptr : dbeta, bp.batch_stats ? nullptr : dgamma};
  err = launch_sum_partials(partial, p.slices, gh.q_count, C, k * k, dweight, rows, stream);
  if (err != cudaSuccess) return err;

  // conv_transpose(dh) = conv(dh) with the kernel rotated by 180 degrees and the padding
  // mirrored: k - 1 - left zeros before (one more than left for an even k).
  const InTile tx = in_tile<T>(p, k, k - 1 - left);
  TileArgs gx = base_args<T>(p, g, L, tx, bp.act, bp.eps);
  gx.in = dh;
  gx.aux = bp.dy;
  gx.out = bp.dx;
  gx.weight = bp.weight;
  gx.flip = 1;
  set_vec<T>(gx);
  return run_tile<T, Mode::kGradX>(gx, p, stream);
}

#define CONVMIXER_CUDA_INSTANTIATE_BACKWARD(T)                                                                \
  template size_t backward_workspace_bytes<T>(const Geometry&, bool);                                         \
  template cudaError_t backward<T, Layout::kNCHW>(const BackwardParams&, void*, void*, cudaStream_t);         \
  template cudaError_t backward<T, Layout::kChannelsLast>(const BackwardParams&, void*, void*, cudaStream_t);

}  // namespace cuda
}  // namespace convmixer_kernels
