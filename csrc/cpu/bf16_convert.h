// bf16 <-> float32 conversions on AVX-512BW: 16 lanes at a time, and whole rows with a
// masked tail. The rounding is c10::BFloat16's (round to nearest even, any NaN to
// 0x7fc0), so the results match the scalar casts of the other levels bit for bit.
#pragma once

#include <immintrin.h>

#include <cstdint>

#if !defined(__AVX512BW__)
#error "bf16_convert.h needs AVX-512BW"
#endif

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {

inline __m512 bf16x16_to_float(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

inline __m512 bf16x16_to_float(const uint16_t* p) {
  return bf16x16_to_float(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

inline __m256i float_to_bf16x16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}

// The mask of the first n of 16 lanes (none for n <= 0).
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// dst[j] = float(src[j]) for j < n; reads and writes nothing past n.
inline void bf16_row_to_float(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = first_lanes(n - j);
    _mm512_mask_storeu_ps(dst + j, m, bf16x16_to_float(_mm256_maskz_loadu_epi16(m, src + j)));
  }
}

// dst[j] = bf16(src[j]) for j < n; reads and writes nothing past n.
inline void float_row_to_bf16(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = first_lanes(n - j);
    _mm256_mask_storeu_epi16(dst + j, m, float_to_bf16x16(_mm512_maskz_loadu_ps(m, src + j)));
  }
}

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
