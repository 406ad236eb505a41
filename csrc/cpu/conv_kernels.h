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
#include <cstring>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

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

// ---------------------------------------------------------------------------------------
// bfloat16 inputs on CPUs with AVX-512 BF16. vdpbf16ps multiplies two pairs of bf16 and
// adds both products, exact in float32, to a float32 lane: a pair of taps (s, s + 1)
// costs one instruction where the float kernels above spend two FMAs, with the same one
// rounding per tap (the instruction treats subnormal inputs and results as zero, far
// below the parity bounds). The kernels read `pairs`, which holds for every element of
// a padded buffer that element and the one `step` elements on (the next column in NCHW,
// the next pixel's channel in channels_last) as bf16; inputs that are bf16 to begin
// with convert exactly. An odd k's last tap goes through the float buffer instead of a
// pair with a zero tap: 0 * inf beyond the window would make a NaN that eager does not.
#if defined(__AVX512BF16__)
inline uint32_t bf16_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u >> 16;  // exact for a value that is a bf16
}

inline uint32_t bf16_pair(float lo, float hi) { return bf16_bits(lo) | (bf16_bits(hi) << 16); }

// pairs[i] = (in[i], in[i + step]) for i < n, with a zero where i + step >= n.
inline void make_bf16_pairs(const float* in, int64_t n, int64_t step, uint32_t* pairs) {
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  int64_t i = 0;
  for (; i + 16 + step <= n; i += 16) {
    const __m512i lo = _mm512_srli_epi32(_mm512_loadu_si512(in + i), 16);
    const __m512i hi = _mm512_and_si512(_mm512_loadu_si512(in + i + step), hi_mask);
    _mm512_storeu_si512(pairs + i, _mm512_or_si512(lo, hi));
  }
  for (; i < n; ++i) pairs[i] = bf16_pair(in[i], i + step < n ? in[i + step] : 0.0f);
}

inline __m512 dot_bf16(__m512 acc, __m512i x, __m512i w) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(x), reinterpret_cast<__m512bh&>(w));
}

// conv_plane for bf16 values: `in` the float plane, `pairs` its column pairs, `wp` the
// taps in pairs, wp[tr * (K / 2) + sp] = (w[tr][2 sp], w[tr][2 sp + 1]).
template <int KT, int NV, int R>
void conv_plane_bf16(const uint32_t* pairs, const float* in, int64_t pitch, const uint32_t* wp, const float* w,
                     float bias, float* out, int64_t opitch, int rows, int cols, int kr) {
  constexpr int VL = 16;
  constexpr int CW = NV * VL;
  const int K = KT > 0 ? KT : kr;
  const int KP = K / 2;
  for (int i0 = 0; i0 < rows; i0 += R) {
    for (int j0 = 0; j0 < cols; j0 += CW) {
      __m512 acc[R][NV];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ps(bias);
      for (int q = 0; q < R + K - 1; ++q) {
        const uint32_t* prow = pairs + (i0 + q) * pitch + j0;
        const int rlo = q - K + 1 > 0 ? q - K + 1 : 0;
        const int rhi = q < R - 1 ? q : R - 1;
#pragma GCC unroll 16
        for (int sp = 0; sp < KP; ++sp) {
          __m512i xv[NV];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_si512(prow + 2 * sp + v * VL);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            if (r < rlo || r > rhi) continue;
            const __m512i wv = _mm512_set1_epi32(static_cast<int>(wp[(q - r) * KP + sp]));
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = dot_bf16(acc[r][v], xv[v], wv);
          }
        }
        if (K % 2) {
          const float* row = in + (i0 + q) * pitch + j0 + K - 1;
          __m512 xv[NV];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_ps(row + v * VL);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            if (r < rlo || r > rhi) continue;
            const __m512 wv = _mm512_set1_ps(w[(q - r) * K + K - 1]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(wv, xv[v], acc[r][v]);
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + (i0 + r) * opitch + j0 + v * VL, acc[r][v]);
    }
  }
}

// conv_tile_cl for bf16 values (one 16-channel vector per pixel): `pairs` pairs each
// pixel's channels with the next pixel's, `wp[(tr * (K / 2) + sp) * 16 + l]` =
// (wt[tr][2 sp][l], wt[tr][2 sp + 1][l]).
template <int KT, int J>
void conv_tile_cl_bf16(const uint32_t* pairs, const float* in, int64_t prow, const uint32_t* wp, const float* wt,
                       const float* bias, float* out, int64_t orow, int rows, int pixels, int kr) {
  constexpr int CB = 16;
  const int K = KT > 0 ? KT : kr;
  const int KP = K / 2;
  const __m512 b = _mm512_loadu_ps(bias);
  for (int i = 0; i < rows; ++i) {
    for (int j0 = 0; j0 < pixels; j0 += J) {
      __m512 acc[J];
#pragma GCC unroll 16
      for (int j = 0; j < J; ++j) acc[j] = b;
      for (int tr = 0; tr < K; ++tr) {
        const int64_t base = (i + tr) * prow + j0 * CB;
#pragma GCC unroll 16
        for (int sp = 0; sp < KP; ++sp) {
          const __m512i wv = _mm512_loadu_si512(wp + (tr * KP + sp) * CB);
#pragma GCC unroll 16
          for (int j = 0; j < J; ++j)
            acc[j] = dot_bf16(acc[j], _mm512_loadu_si512(pairs + base + (j + 2 * sp) * CB), wv);
        }
        if (K % 2) {
          const __m512 wv = _mm512_loadu_ps(wt + (tr * K + K - 1) * CB);
#pragma GCC unroll 16
          for (int j = 0; j < J; ++j)
            acc[j] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(in + base + (j + K - 1) * CB), acc[j]);
        }
      }
#pragma GCC unroll 16
      for (int j = 0; j < J; ++j) _mm512_storeu_ps(out + i * orow + (j0 + j) * CB, acc[j]);
    }
  }
}
#endif

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
