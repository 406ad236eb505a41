// Second stage of the reductions: one thread per output merges the per-slice partials of
// the tile kernels in slice order, so the result does not depend on scheduling.
#include "launch.cuh"

namespace convmixer_kernels {
namespace cuda {
namespace {

constexpr int kReduceThreads = 128;

__global__ void welford_finalize_kernel(const float* __restrict__ partial, int slices, int C, float* __restrict__ mean,
                                        float* __restrict__ var) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  WelfordT<int64_t> w;
  for (int s = 0; s < slices; ++s) {
    const float* p = partial + static_cast<int64_t>(s) * 3 * C + c;
    w.merge(static_cast<int64_t>(p[0]), p[C], p[2 * C]);  // a slice's count is a whole float
  }
  mean[c] = w.mean;
  var[c] = static_cast<float>(static_cast<double>(w.m2) / static_cast<double>(w.n));
}

struct Rows {
  float* p[3];
};

__global__ void sum_partials_kernel(const float* __restrict__ partial, int slices, int Q, int C, int q_split,
                                    float* __restrict__ dst_cq, Rows dst_rows) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(Q) * C) return;
  const int q = static_cast<int>(idx / C), c = static_cast<int>(idx % C);
  float s = 0.0f;
  for (int sl = 0; sl < slices; ++sl) s += partial[(static_cast<int64_t>(sl) * Q + q) * C + c];
  if (q < q_split) {
    dst_cq[static_cast<int64_t>(c) * q_split + q] = s;
  } else {
    // selects, not an indexed parameter array (that would live in local memory)
    const int r = q - q_split;
    float* row = r == 0 ? dst_rows.p[0] : r == 1 ? dst_rows.p[1] : dst_rows.p[2];
    row[c] = s;
  }
}

}  // namespace

cudaError_t launch_welford_finalize(const float* partial, int slices, int C, float* mean, float* var,
                                    cudaStream_t stream) {
  return launch_kernel(welford_finalize_kernel, dim3(ceil_div(C, kReduceThreads)), dim3(kReduceThreads), 0, stream,
                       partial, slices, C, mean, var);
}

cudaError_t launch_sum_partials(const float* partial, int slices, int Q, int C, int q_split, float* dst_cq,
                                float* const (&dst_rows)[3], cudaStream_t stream) {
  const Rows rows{{dst_rows[0], dst_rows[1], dst_rows[2]}};
  return launch_kernel(sum_partials_kernel, dim3(ceil_div(static_cast<int64_t>(Q) * C, kReduceThreads)),
                       dim3(kReduceThreads), 0, stream, partial, slices, Q, C, q_split, dst_cq, rows);
}

}  // namespace cuda
}  // namespace convmixer_kernels
