// Register-blocked depthwise convolution and weight-gradient correlation kernels on
// zero-padded float/double buffers, one for each memory layout.
//
// Both compute out[i][j] = bias + sum_{tr,s} w[tr][s] * in[i + tr][j + s] over a buffer
// that already holds the zero padding, so there are no bounds checks in the tap loops.
// The same kernel serves the transposed convolution of the backward pass: a flipped
// kernel over a buffer padded the mirrored way.
//
// KT is the kernel size when known at compile time (fully unrolled tap loops), or 0 for
// the generic runtime-k path.
#pragma once

#include <cstdint>

#include "../mixer_block_params.h"
#include "simd.h"

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {

// ---------------------------------------------------------------------------------------
// NCHW: one (n, c) plane, vectorized along W.
//
// `in` is a padded plane with row pitch `pitch`; the kernel computes `rows` x `cols`
// outputs (rows a multiple of R, cols a multiple of NV vectors) into `out` (pitch
// `opitch`). Register tile: R output rows x NV vectors. Each input row segment loaded for
// tap column s feeds every output row of the tile it overlaps, so a load serves up to R
// FMAs, and the weights come in as scalar broadcasts.
template <typename T, int KT, int NV, int R>
void conv_plane(const T* in, int64_t pitch, const T* w, T bias, T* out, int64_t opitch, int rows, int cols,
                int kr) {
  using V = Vec<T>;
  constexpr int VL = kLanes<T>;
  constexpr int CW = NV * VL;
  const int K = KT > 0 ? KT : kr;
  for (int i0 = 0; i0 < rows; i0 += R) {
    for (int j0 = 0; j0 < cols; j0 += CW) {
      V acc[R][NV];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = vsplat(bias);
      for (int q = 0; q < R + K - 1; ++q) {
        const T* row = in + (i0 + q) * pitch + j0;
        // Output rows r of the tile that input row q reaches: 0 <= q - r < K.
        const int rlo = q - K + 1 > 0 ? q - K + 1 : 0;
        const int rhi = q < R - 1 ? q : R - 1;
        const T* wq = w + q * K;
#pragma GCC unroll 16
        for (int s = 0; s < K; ++s) {
          V xv[NV];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) {
            xv[v] = vload(row + s + v * VL);
            keep_in_register(xv[v]);
          }
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            if (r < rlo || r > rhi) continue;
            const V wv = vsplat(wq[s - r * K]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] += wv * xv[v];
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) vstore(out + (i0 + r) * opitch + j0 + v * VL, acc[r][v]);
    }
  }
}

// Tap rows tr (and tr + 1 when kPair) of the weight gradient of one plane; see corr_plane.
template <typename T, int KT, bool kPair>
void corr_plane_rows(const T* d, int64_t dpitch, const T* in, int64_t pitch, int rows, int cols, int K, int tr,
                     T* dw) {
  using V = Vec<T>;
  constexpr int VL = kLanes<T>;
  constexpr int KA = KT > 0 ? KT : kMaxKernelSize;
  V acc0[KA], acc1[KA];
#pragma GCC unroll 16
  for (int s = 0; s < K; ++s) acc0[s] = acc1[s] = V{};
  // q runs over the input rows that tap rows tr (and tr + 1) touch.
  for (int q = tr; q < tr + rows + (kPair ? 1 : 0); ++q) {
    const T* d0 = d + (q - tr) * dpitch;      // d row q - tr (row `rows` is zero)
    const T* d1 = d + (q - tr - 1) * dpitch;  // d row q - tr - 1 (row -1 is zero)
    const T* row = in + q * pitch;
    for (int j = 0; j < cols; j += VL) {
      const V a0 = vload(d0 + j);
      const V a1 = kPair ? vload(d1 + j) : V{};
#pragma GCC unroll 16
      for (int s = 0; s < K; ++s) {
        V x = vload(row + j + s);
        keep_in_register(x);
        acc0[s] += a0 * x;
        if (kPair) acc1[s] += a1 * x;
      }
    }
  }
  for (int s = 0; s < K; ++s) {
    dw[tr * K + s] = hsum(acc0[s]);
    if (kPair) dw[(tr + 1) * K + s] = hsum(acc1[s]);
  }
}

// dw[tr][s] = sum_{i < rows, j < cols} d[i][j] * in[i + tr][j + s]: the weight gradient
// of one plane, d being dh (zero past the plane's width). Two tap rows at a time share
// each input load: row q of `in` meets d row q - tr for tap row tr and d row q - tr - 1
// for tap row tr + 1. `d` must have a zero row above and below the `rows` used.
template <typename T, int KT>
void corr_plane(const T* d, int64_t dpitch, const T* in, int64_t pitch, int rows, int cols, int kr, T* dw) {
  const int K = KT > 0 ? KT : kr;
  int tr = 0;
  for (; tr + 1 < K; tr += 2) corr_plane_rows<T, KT, true>(d, dpitch, in, pitch, rows, cols, K, tr, dw);
  if (tr < K) corr_plane_rows<T, KT, false>(d, dpitch, in, pitch, rows, cols, K, tr, dw);
}

// ---------------------------------------------------------------------------------------
// channels_last: one (n, block of CB = CBV * VL channels) tile over all of H x W,
// vectorized along C. Buffers hold CB contiguous channels per pixel: `in` has `prow`
// elements per padded row, `out` `orow`; wt is [k*k][CB], bias [CB].
//
// Register tile: J consecutive output pixels x CBV vectors. For each tap the weight
// vector is loaded once and applied to J pixels; the J + k - 1 input pixels of a tap row
// are shared between the k taps of that row.
template <typename T, int KT, int J, int CBV>
void conv_tile_cl(const T* in, int64_t prow, const T* wt, const T* bias, T* out, int64_t orow, int rows,
                  int pixels, int kr) {
  using V = Vec<T>;
  constexpr int VL = kLanes<T>;
  constexpr int CB = CBV * VL;
  const int K = KT > 0 ? KT : kr;
  V b[CBV];
#pragma GCC unroll 4
  for (int v = 0; v < CBV; ++v) b[v] = vload(bias + v * VL);
  for (int i = 0; i < rows; ++i) {
    for (int j0 = 0; j0 < pixels; j0 += J) {
      V acc[J][CBV];
#pragma GCC unroll 16
      for (int j = 0; j < J; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < CBV; ++v) acc[j][v] = b[v];
      for (int tr = 0; tr < K; ++tr) {
        const T* row = in + (i + tr) * prow + j0 * CB;
        const T* wrow = wt + tr * K * CB;
#pragma GCC unroll 16
        for (int s = 0; s < K; ++s) {
          V wv[CBV];
#pragma GCC unroll 4
          for (int v = 0; v < CBV; ++v) wv[v] = vload(wrow + s * CB + v * VL);
#pragma GCC unroll 16
          for (int j = 0; j < J; ++j)
#pragma GCC unroll 4
            for (int v = 0; v < CBV; ++v) acc[j][v] += wv[v] * vload(row + (j + s) * CB + v * VL);
        }
      }
#pragma GCC unroll 16
      for (int j = 0; j < J; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < CBV; ++v) vstore(out + i * orow + (j0 + j) * CB + v * VL, acc[j][v]);
    }
  }
}

// dw[tr][s][:] = sum_{i < rows, j < pixels} d[i][j][:] * in[i + tr][j + s][:], per
// channel lane. One tap row at a time; its k accumulators stay in registers.
template <typename T, int KT, int CBV>
void corr_tile_cl(const T* d, int64_t drow, const T* in, int64_t prow, int rows, int pixels, int kr, T* dw) {
  using V = Vec<T>;
  constexpr int VL = kLanes<T>;
  constexpr int CB = CBV * VL;
  constexpr int KA = KT > 0 ? KT : kMaxKernelSize;
  const int K = KT > 0 ? KT : kr;
  for (int tr = 0; tr < K; ++tr) {
    V acc[KA][CBV];
#pragma GCC unroll 16
    for (int s = 0; s < K; ++s)
#pragma GCC unroll 4
      for (int v = 0; v < CBV; ++v) acc[s][v] = V{};
    for (int i = 0; i < rows; ++i) {
      const T* drow_i = d + i * drow;
      const T* row = in + (i + tr) * prow;
      for (int j = 0; j < pixels; ++j) {
        V a[CBV];
#pragma GCC unroll 4
        for (int v = 0; v < CBV; ++v) a[v] = vload(drow_i + j * CB + v * VL);
#pragma GCC unroll 16
        for (int s = 0; s < K; ++s)
#pragma GCC unroll 4
          for (int v = 0; v < CBV; ++v) acc[s][v] += a[v] * vload(row + (j + s) * CB + v * VL);
      }
    }
    for (int s = 0; s < K; ++s)
      for (int v = 0; v < CBV; ++v) vstore(dw + (tr * K + s) * CB + v * VL, acc[s][v]);
  }
}

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
