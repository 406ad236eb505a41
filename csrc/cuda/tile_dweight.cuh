// The weight gradient of one task in the dh pass (Mode::kGradH) of the tile engine
// (tile.cuh): dh times the shifted input rows, reduced over the warp per tap.
#pragma once

#include <cstdint>
#include <utility>

#include "common.cuh"
#include "tile_types.cuh"

namespace convmixer_kernels {
namespace cuda {

// Kernel rows per group of the dweight reduction: a group's TI * K taps fit the 32 slots
// of one warp reduce-scatter.
template <int K>
struct DwGroups {
  static constexpr int TI = 32 / K < K ? 32 / K : K;
  static constexpr int G = (K + TI - 1) / TI;
};

// dweight[i][j] += sum over the task's outputs of dh * x[row + i][col + j], for k known
// at compile time: each lane correlates its 4 x NB dh values with its input window
// (every x row read once per group; the window starts d = band_shift columns into the
// aligned row the lane loads), then one reduce-scatter per group leaves tap
// (group * TI * K + lane) in lane `lane`. The group is a template constant so that all
// indices into the 32 partial sums are constants (registers, not local memory).
template <typename T, int K, int NB, int GI>
__device__ __forceinline__ void dweight_group(const typename Dtype<T>::Bits* src, const float (&dv)[4][NB],
                                              float& dw, int lane) {
  constexpr int kPitch = 8 * NB + 8;
  constexpr int d = band_shift<T, K>();
  constexpr int NV = (NB + d + K - 1 + NB - 1) / NB * NB;
  constexpr int TI = DwGroups<K>::TI;
  constexpr int I0 = GI * TI;
  constexpr int I1 = I0 + TI < K ? I0 + TI : K;
  float part[32];
#pragma unroll
  for (int s = 0; s < 32; ++s) part[s] = 0.0f;
#pragma unroll
  for (int rr = I0; rr < I1 + 3; ++rr) {
    float v[NV];
    load_row<T, NB, NV>(src + rr * kPitch, v);
#pragma unroll
    for (int y = 0; y < 4; ++y) {
      const int i = rr - y;
      if (i < I0 || i >= I1) continue;
#pragma unroll
      for (int j = 0; j < K; ++j)
#pragma unroll
        for (int x = 0; x < NB; ++x) part[(i - I0) * K + j] = fmaf(dv[y][x], v[x + d + j], part[(i - I0) * K + j]);
    }
  }
  dw += warp_reduce_scatter32(part, lane);
}

template <typename T, int K, int NB, int... GI>
__device__ __forceinline__ void dweight_groups(const typename Dtype<T>::Bits* src, const float (&dv)[4][NB],
                                               float (&dw)[DwGroups<K>::G], int lane,
                                               std::integer_sequence<int, GI...>) {
  (dweight_group<T, K, NB, GI>(src, dv, dw[GI], lane), ...);
}

template <typename T, int K, int NB>
__device__ __forceinline__ void dweight_task(const typename Dtype<T>::Bits* plane, const float* dh, int strip,
                                             float (&dw)[DwGroups<K>::G], int lane) {
  constexpr int kPitch = 8 * NB + 8, kDhPitch = 8 * NB + 4;
  const int rg = lane >> 3, cg = lane & 7;
  float dv[4][NB];
#pragma unroll
  for (int y = 0; y < 4; ++y)
    load_row<float, NB, NB>(reinterpret_cast<const uint32_t*>(dh + (4 * rg + y) * kDhPitch + cg * NB), dv[y]);
  dweight_groups<T, K, NB>(plane + (strip * 16 + 4 * rg) * kPitch + cg * NB, dv, dw, lane,
                           std::make_integer_sequence<int, DwGroups<K>::G>{});
}

// The same for any k: lane l owns taps l, l + 32, ... and adds its sums to the block's
// partial in global memory (only that lane ever touches those addresses).
template <typename T, int TW>
__device__ __forceinline__ void dweight_task_generic(const typename Dtype<T>::Bits* plane, const float* dh, int k,
                                                     int pitch, int coff, int strip, float* part, int C, int lane) {
  constexpr int kDhPitch = TW + 4;
  for (int t = lane; t < k * k; t += 32) {
    const int i = t / k, j = t - i * k;
    float s = 0.0f;
    for (int r = 0; r < 16; ++r) {
      const typename Dtype<T>::Bits* xr = plane + (strip * 16 + r + i) * pitch + j + coff;
#pragma unroll
      for (int col = 0; col < TW; ++col)
        s = fmaf(ld_shared(dh + r * kDhPitch + col), Dtype<T>::to_float(ld_shared(xr + col)), s);
    }
    part[static_cast<int64_t>(t) * C] += s;
  }
}

}  // namespace cuda
}  // namespace convmixer_kernels
