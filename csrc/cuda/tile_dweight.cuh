// The weight gradient of one task in the dh pass (Mode::kGradH) of the tile engine
// (tile.cuh): dh times the shifted input rows, on tensor cores for the 16-bit types with k
// templated, else on CUDA cores reduced over the warp per tap.
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

// Where the weight gradient runs on tensor cores: the 16-bit types with k templated, but for
// k = 3, whose 9 taps cost fewer instructions on CUDA cores (SASS, sm_90, 32 x 32 tiles: 628
// against 968 per item and warp; k = 5: 1287 against 966, k = 9: 3863 against 1563).
template <typename T, int K>
__host__ __device__ constexpr bool dweight_on_tensor_cores() {
  return Dtype<T>::kMma && K >= 5;
}

// The tensor-core weight gradient (dweight_on_tensor_cores). For each dh row p of a
// task, D[j][i] += sum_v A[j][v] B[v][i] with A[j][v] = dh[p][v - j] and
// B[v][i] = x[p + i][v + d] (d = band_shift): dweight[i][j] = D[j][i], j and i padded to 16
// and 8 * kNT, m16n8k16 steps of 16 columns v (the last one 8 wide: 40 columns at 32 x 32
// tiles, 24 at 16 x 16) per tile of row shifts, float accumulators that hold a channel's taps
// for the whole block. The row shift i falls on x, so each B row is an aligned run of one x
// row that ldmatrix reads as conv_mma reads its A. The column shift j falls on dh, which the
// pass writes itself: each A register is a pair (dh[c], dh[c + 1]) at any c, so every dh row
// is written twice (dweight_store_dh), from an even and from an odd element, between zeros,
// and every pair is one aligned 32-bit load from the copy that has it at an even element.
// dh goes through the MMA in the input's 16-bit type, as eager's own dh tensor is;
// accumulation is in float.
template <int K, int NB>
struct DweightMma {
  static constexpr int kTW = 8 * NB;
  static constexpr int kNT = K > 8 ? 2 : 1;  // tiles of 8 row shifts i
  static constexpr int kSteps = (kTW + 8) / 16;  // whole steps of 16 columns per dh row; then one of 8
  static constexpr int kLoads = 2 * kSteps + 2;  // A loads per dh row and lane
  // dh[row][c] of the warp's task is element at(q, row, c) of its scratch in copy q (1: one
  // element further, so that the pairs at odd c are aligned), between zeros. A lane's pairs
  // start from c = -15 - d (d = band_shift <= 4) and reach c = kTW + 7 - d, so row r reads
  // elements kLeft - 19 .. kLeft + kTW + 8 past r * kRow of its copy.
  static constexpr int kLeft = 20;
  // Rows share their zero margins: with kRow >= kTW + 19 each row's data lies past the
  // previous row's reads, and its reads past the previous row's data. An odd number of
  // 16-byte chunks per row puts the 8 rows of one fragment store (a row per lane group g)
  // on 8 distinct groups of 4 banks, so a store is one wavefront (rows of 64 elements put
  // all 8 on the same banks: 8 wavefronts).
  static constexpr int kRow = ((kTW + 19 + 7) / 8 | 1) * 8;
  static constexpr int kSpan = 15 * kRow + kLeft + kTW + 9;  // elements a copy's 16 rows read
  // Copy 1 starts 16 banks after copy 0 (32 elements mod 64): an A load reads 7 words of each
  // copy (the lanes of even g one copy, of odd g the other), at the same offsets in both.
  static constexpr int kOdd = (kSpan + 31) / 64 * 64 + 32;
  static constexpr int kWarpElems = (kOdd + kSpan + 7) / 8 * 8;  // a warp's scratch, whole 16 bytes
  static __host__ __device__ constexpr int at(int q, int row, int c) { return q * kOdd + row * kRow + kLeft + q + c; }
  // Where the lane's A pairs of the task's first dh row start: at c = 2 t - g - d - 8, in the
  // copy that has it at an even element; pair u (< kLoads) of row p is 8 u + p kRow further.
  static __host__ __device__ constexpr int a_start(int lane, int d) {
    const int c0 = 2 * (lane & 3) - (lane >> 2) - d - 8;
    return at(c0 & 1, 0, c0);
  }
  static_assert(kLeft >= 19 && kLeft % 2 == 0, "row 0's reads start at kLeft - 19; pairs at even elements");
};

// dh[row][col], dh[row][col + 1] (col even) of the warp's task into both copies.
template <typename T, int K, int NB>
__device__ __forceinline__ void dweight_store_dh(typename Dtype<T>::Bits* scratch, int row, int col, float dh0,
                                                 float dh1) {
  using M = DweightMma<K, NB>;
  store_pair<T>(scratch + M::at(0, row, col), dh0, dh1);
  typename Dtype<T>::Bits* odd = scratch + M::at(1, row, col);
  odd[0] = Dtype<T>::from_float(dh0);
  odd[1] = Dtype<T>::from_float(dh1);
}

// The exact sum of a task's products for the lane's elements of D, on CUDA cores, where the
// MMA's came out non-finite: its zeros (dh's margins) meet x beside the task's window, so an
// inf there would turn into NaN where eager multiplies it by no dh of this task.
template <typename T, int K, int NB>
__device__ __forceinline__ void dweight_exact(const uint16_t* plane, const uint16_t* scratch, int strip,
                                              float (&d)[DweightMma<K, NB>::kNT][4], int lane) {
  using M = DweightMma<K, NB>;
  constexpr int kPitch = 8 * NB + 8, D = band_shift<T, K>();
#pragma unroll
  for (int nt = 0; nt < M::kNT; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int j = (lane >> 2) + 8 * (r >> 1), i = 8 * nt + 2 * (lane & 3) + (r & 1);
      float s = 0.0f;
      if (i < K && j < K) {
        // rolled loops: this path must not claim registers from the tensor-core one
#pragma unroll 1
        for (int p = 0; p < 16; ++p)
#pragma unroll 1
          for (int col = 0; col < M::kTW; ++col)
            s = fmaf(Dtype<T>::to_float(ld_shared(scratch + M::at(0, p, col))),
                     Dtype<T>::to_float(ld_shared(plane + (strip * 16 + p + i) * kPitch + col + j + D)), s);
      }
      d[nt][r] = s;
    }
}

// One task (16 dh rows from `strip`) into the accumulators d; dh of the task is in the
// warp's scratch (dweight_store_dh, then a __syncwarp).
template <typename T, int K, int NB>
__device__ __forceinline__ void dweight_task_mma(const uint16_t* plane, const uint16_t* scratch, int strip,
                                                 float (&d)[DweightMma<K, NB>::kNT][4], int lane) {
  using M = DweightMma<K, NB>;
  constexpr int kPitch = 8 * NB + 8, D = band_shift<T, K>(), NT = M::kNT;
  static_assert(M::kTW + 8 == 40 || M::kTW + 8 == 24, "steps of 16, 16 and 8 columns cover a 40- or 24-wide row");
  constexpr int kSteps = M::kSteps;
  const int g = lane >> 2, t = lane & 3;
  const uint32_t* a_row = reinterpret_cast<const uint32_t*>(scratch + M::a_start(lane, D));
  // B: ldmatrix rows are x rows strip * 16 + p + i, i the lane's row shift, clamped (shifts
  // past k feed only dropped outputs). x4: NT = 2 [tile][half of 16 columns], NT = 1
  // [step][half] (x2: one step's halves); x2 of the last 8 columns: [tile]
  const int i4 = min(NT == 2 ? (lane >> 4) * 8 + (lane & 7) : lane & 7, K - 1);
  const int col4 = NT == 2 ? ((lane >> 3) & 1) * 8 : (lane >> 3) * 8;
  const int i2 = min(NT == 2 ? ((lane >> 3) & 1) * 8 + (lane & 7) : lane & 7, K - 1);
  const uint32_t b4 = smem_addr(plane + (strip * 16 + i4) * kPitch + col4);
  const uint32_t b2 = smem_addr(plane + (strip * 16 + i2) * kPitch + 16 * kSteps);
  float td[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) td[nt][r] = 0.0f;
#pragma unroll 4
  for (int p = 0; p < 16; ++p) {
    uint32_t w[M::kLoads];
#pragma unroll
    for (int u = 0; u < M::kLoads; ++u) w[u] = ld_shared(a_row + (p * M::kRow) / 2 + 4 * u);
    const uint32_t row = p * kPitch * 2;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const uint32_t a[4] = {w[2 * s + 1], w[2 * s], w[2 * s + 2], w[2 * s + 1]};
      uint32_t b[4];
      if constexpr (NT == 2) {
        ldmatrix_x4(b, b4 + row + s * 32);
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
        mma_16816<T>(td[0], a, b0);
        mma_16816<T>(td[1], a, b1);
      } else if (s % 2 == 0 && s + 1 < kSteps) {  // one x4 holds two steps
        ldmatrix_x4(b, b4 + row + s * 32);
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
        const uint32_t a1[4] = {w[2 * s + 3], w[2 * s + 2], w[2 * s + 4], w[2 * s + 3]};
        mma_16816<T>(td[0], a, b0);
        mma_16816<T>(td[0], a1, b1);
      } else if (s % 2 == 0) {  // a last step of its own
        uint32_t b0[2];
        ldmatrix_x2(b0, b4 + row + s * 32);
        mma_16816<T>(td[0], a, b0);
      }
    }
    // the last 8 columns: the upper half of A and B is zero
    uint32_t b[2];
    ldmatrix_x2(b, b2 + row);
    const uint32_t a[4] = {w[2 * kSteps + 1], w[2 * kSteps], 0u, 0u};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const uint32_t bt[2] = {b[nt], 0u};
      mma_16816<T>(td[nt], a, bt);
    }
  }
  bool bad = false;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int j = g + 8 * (r >> 1), i = 8 * nt + 2 * t + (r & 1);
      bad |= i < K && j < K && !is_finite(td[nt][r]);
    }
  if (__any_sync(kFullMask, bad)) dweight_exact<T, K, NB>(plane, scratch, strip, td, lane);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) d[nt][r] += td[nt][r];
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
