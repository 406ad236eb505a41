// The NCHW depthwise convolution of bf16 planes on AVX-512 BF16 (vdpbf16ps), for the
// levels that have it and no AMX tiles (Zen 4; see CMK_HAVE_BF16_DOT in kernel_common.h).
//
// vdpbf16ps adds to each float32 lane the two products of a pair of bf16 values with a
// pair of bf16 weights. A pair of horizontally adjacent taps (s, s + 1) of a kernel row
// is one such pair when lane j of the input holds (x[j + s], x[j + s + 1]): so the plane
// is turned once into `pairs`, pairs[i][j] = (x[i][j], x[i][j + 1]) packed low, high,
// and a kernel row of K taps costs K / 2 instructions per vector instead of K FMAs. The
// products of two bf16 values are exact in float32, and the sums accumulate in float32
// like the FMA path, so the results differ from it only in the order of the additions.
// (vdpbf16ps flushes subnormals to zero, in its inputs and in the running sum: errors
// below 1.2e-38 in magnitude, far inside the bf16 parity bound.)
//
// An odd K leaves the last tap of each row unpaired; it runs as an FMA on the float
// plane rather than as a pair with a zero weight, because 0 * inf is a NaN that eager
// does not produce when the neighbour just past a window is infinite.
//
// On Zen 4 a 512-bit vdpbf16ps issues like a 512-bit FMA and does twice its multiply-adds,
// so the convolution costs about (K / 2 + K % 2) / K of the float one; the epilogue and
// the loads are unchanged (timings per level: benchmarks/results/amd_epyc_cpu_levels.md).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "bf16_convert.h"

#if !defined(__AVX512BF16__)
#error "bf16_dot_conv.h needs AVX-512 BF16"
#endif

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {

// pairs[i * pitch + j] = (bf16 bits of in[i * pitch + j]) | (those of in[.. + j + 1]) << 16
// for the `rows` rows of a padded float plane whose values are bf16 (the truncation to
// the upper 16 bits is then exact). The last column pairs with zero.
inline void make_bf16_pairs(const float* in, int64_t pitch, int64_t rows, uint32_t* pairs) {
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = in + i * pitch;
    uint32_t* out = pairs + i * pitch;
    for (int64_t j = 0; j < pitch; j += 16) {
      const int64_t left = pitch - j;
      const __mmask16 m0 = first_lanes(left), m1 = first_lanes(left - 1);
      const __m512i a = _mm512_castps_si512(_mm512_maskz_loadu_ps(m0, row + j));
      const __m512i b = _mm512_castps_si512(_mm512_maskz_loadu_ps(m1, row + j + 1));
      const __m512i p = _mm512_or_si512(_mm512_srli_epi32(a, 16), _mm512_and_si512(b, hi_mask));
      _mm512_mask_storeu_epi32(out + j, m0, p);
    }
  }
}

inline uint32_t bf16_bits(float v) {
  uint32_t u;
  __builtin_memcpy(&u, &v, sizeof(u));
  return u >> 16;
}

// wpairs[tr * (K / 2) + p] = (w[tr][2p], w[tr][2p + 1]) packed like `pairs`, for taps
// whose float values are bf16.
inline void make_bf16_weight_pairs(const float* w, int K, uint32_t* wpairs) {
  const int P = K / 2;
  for (int tr = 0; tr < K; ++tr)
    for (int p = 0; p < P; ++p)
      wpairs[tr * P + p] = bf16_bits(w[tr * K + 2 * p]) | (bf16_bits(w[tr * K + 2 * p + 1]) << 16);
}

// out[i][j] = bias + sum_{tr,s} w[tr][s] * in[i + tr][j + s], as conv_plane computes it
// (conv_kernels.h: the same register tile of R rows x NV vectors, the same arguments),
// with the tap pairs from `pairs` / `wpairs` and an odd K's last column of taps from the
// float plane `in` and `w`.
template <int KT, int NV, int R>
void conv_plane_bf16(const uint32_t* pairs, const float* in, int64_t pitch, const uint32_t* wpairs, const float* w,
                     float bias, float* out, int64_t opitch, int rows, int cols, int kr) {
  constexpr int VL = 16;
  constexpr int CW = NV * VL;
  const int K = KT > 0 ? KT : kr;
  const int P = K / 2;
  const bool odd = (K & 1) != 0;
  for (int i0 = 0; i0 < rows; i0 += R) {
    for (int j0 = 0; j0 < cols; j0 += CW) {
      __m512 acc[R][NV];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ps(bias);
      for (int q = 0; q < R + K - 1; ++q) {
        // Output rows r of the tile that input row q reaches: 0 <= q - r < K.
        const int rlo = q - K + 1 > 0 ? q - K + 1 : 0;
        const int rhi = q < R - 1 ? q : R - 1;
        const uint32_t* prow = pairs + (i0 + q) * pitch + j0;
        const uint32_t* wq = wpairs + q * P;
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) {
          __m512i xv[NV];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_si512(prow + 2 * p + v * VL);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            if (r < rlo || r > rhi) continue;
            const __m512i wv = _mm512_set1_epi32(static_cast<int>(wq[p - r * P]));
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)xv[v], (__m512bh)wv);
          }
        }
        if (odd) {
          const float* row = in + (i0 + q) * pitch + j0 + (K - 1);
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

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
