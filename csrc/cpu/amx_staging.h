// Data movement of the AMX level's bf16 passes (AVX-512BW): the 16 x 16 transposes that
// turn channels_last pixels into the per-channel planes the tile kernels convolve, and
// back. The bf16 <-> float32 conversions are in bf16_convert.h.
#pragma once

#include <immintrin.h>

#include <array>
#include <cstdint>

#include "bf16_convert.h"

#if !defined(__AVX512BW__)
#error "amx_staging.h needs AVX-512BW"
#endif

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {

// A 16 x 16 transpose of 16-bit elements: dst row r, column q = src row q, column r,
// rows of src `src_stride` and of dst `dst_stride` elements apart. `rows_in` rows of src
// are read (the rest are zeros), and `cols_in` elements of each (masked loads, so the
// reads stay inside the tensor); all 16 x 16 elements of dst are written.
//
// Eight registers hold two rows each; three rounds of two-source permutes (vpermt2w)
// each gather, for half of the columns, the rows of two registers into one, so after the
// third round register R holds transposed rows 2R and 2R + 1: 24 permutes per 256
// elements. The permute indices are worked out once by following each element.
class Transpose16 {
 public:
  static const Transpose16& get() {
    static const Transpose16 t;
    return t;
  }

  void operator()(const uint16_t* src, int64_t src_stride, int rows_in, int cols_in, uint16_t* dst,
                  int64_t dst_stride) const {
    const __mmask16 cols = first_lanes(cols_in);
    __m512i v[8];
    for (int k = 0; k < 8; ++k) {
      const __mmask16 m0 = 2 * k < rows_in ? cols : 0, m1 = 2 * k + 1 < rows_in ? cols : 0;
      const __m256i lo = _mm256_maskz_loadu_epi16(m0, src + 2 * k * src_stride);
      const __m256i hi = _mm256_maskz_loadu_epi16(m1, src + (2 * k + 1) * src_stride);
      v[k] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    for (int round = 0; round < 3; ++round) {
      __m512i w[8];
      for (int k = 0; k < 8; ++k) {
        const Step& st = steps_[round][k];
        w[k] = _mm512_permutex2var_epi16(v[st.a], _mm512_loadu_si512(st.index.data()), v[st.b]);
      }
      for (int k = 0; k < 8; ++k) v[k] = w[k];
    }
    for (int k = 0; k < 8; ++k) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * k * dst_stride), _mm512_castsi512_si256(v[k]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (2 * k + 1) * dst_stride),
                          _mm512_extracti64x4_epi64(v[k], 1));
    }
  }

 private:
  struct Step {
    int a, b;                          // source registers
    std::array<uint16_t, 32> index;    // lane l takes lane index[l] of [v[a], v[b]]
  };
  Step steps_[3][8];

  // Element (row q, column r) of src is tracked as q * 16 + r. Before round 0 register k
  // holds rows 2k, 2k + 1, lane = (q % 2) * 16 + r. Round s pairs registers that differ
  // in bit (2 - s) of their index and splits their columns by bit (3 - s) of r; output
  // lanes are ordered by (r, q), which after the last round is the transposed layout.
  Transpose16() {
    int at[8][32];
    for (int k = 0; k < 8; ++k)
      for (int l = 0; l < 32; ++l) at[k][l] = (2 * k + l / 16) * 16 + l % 16;
    for (int s = 0; s < 3; ++s) {
      const int reg_bit = 1 << (2 - s), col_bit = 1 << (3 - s);
      int next[8][32];
      for (int k = 0; k < 8; ++k) {
        // Output k: from the pair (k without reg_bit, k with it), the columns whose
        // col_bit equals k's reg_bit.
        const int a = k & ~reg_bit, b = k | reg_bit;
        const bool want = (k & reg_bit) != 0;
        int n = 0;
        int src_lane[32];
        for (int r = 0; r < 16; ++r) {
          for (int q = 0; q < 16; ++q) {
            const int e = q * 16 + r;
            for (int half = 0; half < 2; ++half) {
              const int reg = half ? b : a;
              for (int l = 0; l < 32; ++l) {
                if (at[reg][l] == e && ((r & col_bit) != 0) == want) {
                  next[k][n] = e;
                  src_lane[n++] = half * 32 + l;
                }
              }
            }
          }
        }
        steps_[s][k].a = a;
        steps_[s][k].b = b;
        for (int l = 0; l < 32; ++l) steps_[s][k].index[l] = static_cast<uint16_t>(src_lane[l]);
      }
      for (int k = 0; k < 8; ++k)
        for (int l = 0; l < 32; ++l) at[k][l] = next[k][l];
    }
  }
};

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
