// The convolution of one task (one channel x 16 output rows) of the tile engine
// (tile.cuh), from the staged input planes into a lane's accumulators: on tensor cores
// (banded MMA), its exact CUDA-core recomputation, and the CUDA-core paths (templated k,
// any k).
#pragma once

#include <cstdint>

#include "common.cuh"
#include "tile_types.cuh"

namespace convmixer_kernels {
namespace cuda {

// B fragments of the banded matrices, one per kernel row i: B_i[kk][nn] = w[i][kk - nn - d]
// (zero off the band), d = band_shift, so that column nn of A_i * B_i is the row-i
// contribution to output nn of an n-tile whose 16 inputs start d columns before its first
// output's window (d + 8 + k - 1 <= 16 for k <= 9). Lane (g, t) holds rows 2t, 2t+1 (reg 0)
// and 2t+8, 2t+9 (reg 1) of column g.
template <typename T, int K>
__device__ __forceinline__ void build_band(const TileArgs& a, int c, int lane, uint32_t (&bf)[K][2]) {
  constexpr int d = band_shift<T, K>();
  static_assert(d >= 0 && d + 8 + K - 1 <= 16, "the shifted band must fit the 16 columns of the window");
  const uint16_t* w = static_cast<const uint16_t*>(a.weight);
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < K; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t word = 0;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = 2 * t + 8 * h + e - g - d;
        if (c < a.C && j >= 0 && j < K) {
          const int tap = a.flip ? (K - 1 - i) * K + (K - 1 - j) : i * K + j;
          word |= static_cast<uint32_t>(__ldg(w + static_cast<int64_t>(c) * K * K + tap)) << (16 * e);
        }
      }
      bf[i][h] = word;
    }
  }
}

// Tensor-core conv of one task: 16 rows from `strip`, NB n-tiles of 8 columns. For kernel
// row i the A tiles of the n-tiles are the 8-column halves (b, b + 1) of the same input
// rows (n-tile b's window: plane columns 8b .. 8b + 15), so NB + 1 halves per row are
// loaded once and shared by neighbouring n-tiles.
template <typename T, int K, int NB>
__device__ __forceinline__ void conv_mma(const uint16_t* plane, int strip, const uint32_t (&bf)[K][2],
                                         float (&acc)[4 * NB], int lane) {
  constexpr int kPitch = 8 * NB + 8;
#pragma unroll
  for (int e = 0; e < 4 * NB; ++e) acc[e] = 0.0f;
  // ldmatrix: lanes 0-15 address rows 0-15 of the first 8 columns, lanes 16-31 rows 0-15
  // of the next 8 (x2 uses only lanes 0-15).
  const uint32_t base = smem_addr(plane + (strip * 16 + (lane & 15)) * kPitch + (lane >> 4) * 8);
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const uint32_t row = base + i * kPitch * 2;
    uint32_t half[NB + 1][2];
#pragma unroll
    for (int h = 0; h < NB; h += 2) {
      uint32_t r[4];
      ldmatrix_x4(r, row + h * 16);
      half[h][0] = r[0];
      half[h][1] = r[1];
      half[h + 1][0] = r[2];
      half[h + 1][1] = r[3];
    }
    {
      uint32_t r[2];
      ldmatrix_x2(r, row + NB * 16 - (lane >> 4) * 16);
      half[NB][0] = r[0];
      half[NB][1] = r[1];
    }
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      const uint32_t af[4] = {half[b][0], half[b][1], half[b + 1][0], half[b + 1][1]};
      mma_16816<T>(acc + 4 * b, af, bf[i]);
    }
  }
}

// Exact recomputation of a tensor-core task on CUDA cores, in the fragment layout (see
// the top of tile.cuh: only when an accumulator came out non-finite).
template <typename T, int K, int NB>
__device__ __forceinline__ void conv_exact(const TileArgs& a, const uint16_t* plane, int c, int strip,
                                        float (&acc)[4 * NB], int lane) {
  constexpr int kPitch = 8 * NB + 8;
  constexpr int d = band_shift<T, K>();
  const uint16_t* w = static_cast<const uint16_t*>(a.weight) + static_cast<int64_t>(c) * K * K;
#pragma unroll
  for (int e = 0; e < 4 * NB; ++e) {
    const int r0 = strip * 16 + Frag<true, NB>::row(e, lane), c0 = Frag<true, NB>::col(e, lane);
    float s = 0.0f;
    // rolled loops: this path must not claim registers from the tensor-core one
#pragma unroll 1
    for (int i = 0; i < K; ++i)
#pragma unroll 1
      for (int j = 0; j < K; ++j) {
        const int tap = a.flip ? (K - 1 - i) * K + (K - 1 - j) : i * K + j;
        s = fmaf(Dtype<T>::to_float(__ldg(w + tap)), Dtype<T>::to_float(ld_shared(plane + (r0 + i) * kPitch + c0 + d + j)),
                 s);
      }
    acc[e] = c < a.C ? s : 0.0f;
  }
}

// Filter rows of the templated CUDA-core path are padded to whole float4s.
template <int K>
__host__ __device__ constexpr int filter_pitch() {
  return (K + 3) / 4 * 4;
}

// CUDA-core conv of one task with k known at compile time: each input row of the lane's
// window is read once (vector loads) and feeds up to 4 output rows. Filter row r is
// loaded at step r, so only the 4 rows in use occupy registers.
template <int K, int NB>
__device__ __forceinline__ void conv_simt(const float* plane, const float* w, int strip, float (&acc)[4 * NB],
                                          int lane) {
  constexpr int kPitch = 8 * NB + 8;
  constexpr int NV = (NB + K - 1 + NB - 1) / NB * NB;
  constexpr int KP = filter_pitch<K>();
#pragma unroll
  for (int e = 0; e < 4 * NB; ++e) acc[e] = 0.0f;
  const float* src = plane + (strip * 16 + ((lane >> 3) << 2)) * kPitch + (lane & 7) * NB;
  float wr[K][KP];
#pragma unroll
  for (int r = 0; r < K + 3; ++r) {
    if (r < K) {
#pragma unroll
      for (int j = 0; j < KP; j += 4) {
        const float4 q = lds_pinned_f32x4(w + r * KP + j);
        wr[r][j] = q.x, wr[r][j + 1] = q.y, wr[r][j + 2] = q.z, wr[r][j + 3] = q.w;
      }
    }
    float v[NV];
    load_row<float, NB, NV>(reinterpret_cast<const uint32_t*>(src + r * kPitch), v);
#pragma unroll
    for (int y = 0; y < 4; ++y) {
      const int i = r - y;
      if (i < 0 || i >= K) continue;
#pragma unroll
      for (int j = 0; j < K; ++j)
#pragma unroll
        for (int x = 0; x < NB; ++x) acc[y * NB + x] = fmaf(wr[i][j], v[x + j], acc[y * NB + x]);
    }
  }
}

// CUDA-core conv of one task for any k: `coff` = co - pad shifts the columns of the
// (vector-aligned) generic tile.
template <typename T, int NB>
__device__ __forceinline__ void conv_generic(const typename Dtype<T>::Bits* plane, const float* w, int k, int pitch,
                                             int coff, int strip, float (&acc)[4 * NB], int lane) {
#pragma unroll
  for (int e = 0; e < 4 * NB; ++e) acc[e] = 0.0f;
  const typename Dtype<T>::Bits* src = plane + (strip * 16 + ((lane >> 3) << 2)) * pitch + (lane & 7) * NB + coff;
  for (int r = 0; r < k + 3; ++r) {
    for (int j = 0; j < k; ++j) {
      float v[NB];
#pragma unroll
      for (int x = 0; x < NB; ++x) v[x] = Dtype<T>::to_float(ld_shared(src + r * pitch + x + j));
#pragma unroll
      for (int y = 0; y < 4; ++y) {
        const int i = r - y;
        if (i < 0 || i >= k) continue;
        const float wv = w[i * k + j];
#pragma unroll
        for (int x = 0; x < NB; ++x) acc[y * NB + x] = fmaf(wv, v[x], acc[y * NB + x]);
      }
    }
  }
}

}  // namespace cuda
}  // namespace convmixer_kernels
