// The four activations of the mixer block and their derivatives on SIMD vectors.
//
// Act<A, T>::fwd(h) = act(h); Act<A, T>::fwd_grad(h, &d) returns act(h) and sets
// d = act'(h); Act<A, T>::chain(d, da) = dL/dh given dL/da. NaN and +-inf give what
// eager PyTorch gives (e.g. gelu(-inf) = NaN, relu(NaN) = NaN, the relu gradient at a NaN
// input passes the incoming gradient like threshold_backward), except that gelu(+inf) is
// +inf, the true limit (float32 eager returns NaN there, float64 eager +inf).
//
// The float GELUs, the costliest part of the epilogue, are piecewise quintics looked up
// from act_tables.h (a few FMAs and permutes a vector); double and the other
// activations use exp/erfc.
#pragma once

#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../mixer_block_params.h"
#include "act_tables.h"
#include "simd.h"
#include "vec_math.h"

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {

template <Activation A, typename T>
struct Act;

// gelu(h) = h * Phi(h), Phi(h) = erfc(-h / sqrt 2) / 2, evaluated as 1 - erfc(|z|) / 2
// for h >= 0 and erfc(|z|) / 2 below, so the negative tail keeps full relative accuracy
// instead of cancelling in 1 + erf.
template <typename T>
struct Act<Activation::kGelu, T> {
  using V = Vec<T>;
  static V phi(V h, V* e) {
    const V z = h * T(0.70710678118654752440);
    const V az = z < T(0) ? -z : z;
    *e = vexp(-(az * az));  // exp(-h^2 / 2), shared with the derivative
    const V ec = verfc_nonneg(az, *e);
    return z >= T(0) ? T(1) - T(0.5) * ec : T(0.5) * ec;
  }
  static V fwd(V h) {
    V e;
    return h * phi(h, &e);
  }
  static V fwd_grad(V h, V* d) {
    V e;
    const V p = phi(h, &e);
    *d = p + h * e * T(0.39894228040143267794);  // Phi + h * pdf(h)
    return h * p;
  }
  static V chain(V d, V da) { return d * da; }
};

// gelu_tanh(h) = h (1 + tanh(u)) / 2 = h * sigmoid(2u), u = sqrt(2/pi) (h + 0.044715 h^3).
// The sigmoid form avoids tanh and the cancellation in 1 + tanh(u) for h < 0.
template <typename T>
struct Act<Activation::kGeluTanh, T> {
  using V = Vec<T>;
  static constexpr T kBeta = T(0.79788456080286535588);  // sqrt(2 / pi)
  static constexpr T kKappa = T(0.044715);
  static V fwd(V h) {
    const V u = kBeta * (h + kKappa * h * h * h);
    return h / (T(1) + vexp(T(-2) * u));
  }
  static V fwd_grad(V h, V* d) {
    const V h2 = h * h;
    const V u = kBeta * (h + kKappa * h2 * h);
    const V e = vexp(T(-2) * u);
    const V s = T(1) / (T(1) + e);
    // 1 - s = e * s without cancellation while e < 1 (s > 1/2).
    const V sc = e < T(1) ? e * s : T(1) - s;
    const V du = kBeta * (T(1) + T(3) * kKappa * h2);
    // d/dh [h sigmoid(2u)] = s + h * 2 s (1 - s) u'
    *d = s + T(2) * h * s * sc * du;
    return h * s;
  }
  static V chain(V d, V da) { return d * da; }
};

// Position of x in the tables: interval i (clamped to [0, 31]) and local coordinate u.
// Outside [-6, 6] (and for NaN) i and u are meaningless; callers select those lanes away
// or let a NaN u carry through.
struct TableIndex {
  IVec<float> i;
  Vec<float> u;
};

inline TableIndex table_index(Vec<float> x) {
  using V = Vec<float>;
  using I = IVec<float>;
  constexpr float kHalf = kActTableIntervals / 2;
  // x in interval widths. Not (x + 6) / width: rounding x + 6 would move x by up to
  // 2.4e-7, a few ulps of the activation near 0.
  const V t = x * (kActTableIntervals / (2 * kActTableHalfRange));
  // Clamped before the conversion so that no out-of-range float is converted.
  V tc = t + kHalf;
  tc = tc > 0.0f ? tc : V{};
  tc = tc < float(kActTableIntervals - 1) ? tc : vsplat(float(kActTableIntervals - 1));
  TableIndex r;
  r.i = __builtin_convertvector(tc, I);
  // Interval i is centred on i - 15.5 widths, an exact float.
  r.u = t - (__builtin_convertvector(r.i, V) - (kHalf - 0.5f));
  return r;
}

// The lanes' table entries row[i], i in [0, 31]. AVX-512: one two-register permute. AVX2:
// vpermps picks from 8 entries by i's low 3 bits, so four of them (one per quarter of the
// row) and blends by bits 3 and 4, whose masks (the bit moved to the sign, which blendv
// reads) serve every row of a polynomial. The element-wise fallback of the baseline level
// (SSE2 has no variable permute) went through the stack lane by lane: on the avx2 level it
// took 3x the AVX-512 epilogue's time, more than 40% of the eval forward.
struct TableLanes {
  IVec<float> i;
#if !defined(__AVX512F__) && defined(__AVX2__)
  __m256 bit3, bit4;
#endif
  explicit TableLanes(const IVec<float>& index) : i(index) {
#if !defined(__AVX512F__) && defined(__AVX2__)
    bit3 = _mm256_castsi256_ps(_mm256_slli_epi32((__m256i)index, 28));
    bit4 = _mm256_castsi256_ps(_mm256_slli_epi32((__m256i)index, 27));
#endif
  }
};

inline Vec<float> table_lookup(const float (&row)[kActTableIntervals], const TableLanes& t) {
#if defined(__AVX512F__)
  static_assert(kLanes<float> == 16 && kActTableIntervals == 32, "one two-register permute per lookup");
  return (Vec<float>)_mm512_permutex2var_ps(_mm512_load_ps(row), (__m512i)t.i, _mm512_load_ps(row + 16));
#elif defined(__AVX2__)
  static_assert(kLanes<float> == 8 && kActTableIntervals == 32, "four one-register permutes per lookup");
  const __m256i i = (__m256i)t.i;
  const __m256 q0 = _mm256_permutevar8x32_ps(_mm256_load_ps(row), i);
  const __m256 q1 = _mm256_permutevar8x32_ps(_mm256_load_ps(row + 8), i);
  const __m256 q2 = _mm256_permutevar8x32_ps(_mm256_load_ps(row + 16), i);
  const __m256 q3 = _mm256_permutevar8x32_ps(_mm256_load_ps(row + 24), i);
  return (Vec<float>)_mm256_blendv_ps(_mm256_blendv_ps(q0, q1, t.bit3), _mm256_blendv_ps(q2, q3, t.bit3), t.bit4);
#else
  Vec<float> r;
  for (int l = 0; l < kLanes<float>; ++l) r[l] = row[t.i[l]];
  return r;
#endif
}

inline Vec<float> table_eval(const float (&c)[kActTableDegree + 1][kActTableIntervals], const TableIndex& ti) {
  const TableLanes lanes(ti.i);
  Vec<float> p = table_lookup(c[kActTableDegree], lanes);
  for (int k = kActTableDegree - 1; k >= 0; --k) p = p * ti.u + table_lookup(c[k], lanes);
  return p;
}

// act(h) = h * F(h) with F a CDF, 0 below -6 and 1 above 6, and F' = Pdf. The Cdf table
// holds F on h < 0 and F - 1/2 on h >= 0 (intervals 16..31), so act = h * table + h * o
// with o = 0 or 1/2: small table values near 0 and no cancellation on either side keep
// act within a few ulps.
template <const float (&Cdf)[kActTableDegree + 1][kActTableIntervals],
          const float (&Pdf)[kActTableDegree + 1][kActTableIntervals]>
struct TabulatedGelu {
  using V = Vec<float>;
  struct Parts {
    V f;  // the table value (F, or F - 1/2)
    V o;  // what it is short of F (0 or 1/2)
  };
  static Parts cdf(V h, const TableIndex& ti) {
    Parts p;
    p.f = table_eval(Cdf, ti);
    p.o = ti.i >= kActTableIntervals / 2 ? vsplat(0.5f) : V{};
    p.f = h < -kActTableHalfRange ? V{} : p.f;
    p.f = h > kActTableHalfRange ? vsplat(0.5f) : p.f;
    return p;
  }
  // At -inf: -inf * 0 = NaN, as in eager.
  static V apply(V h, const Parts& p) { return h * p.f + h * p.o; }
  static V fwd(V h) { return apply(h, cdf(h, table_index(h))); }
  static V fwd_grad(V h, V* d) {
    const TableIndex ti = table_index(h);
    const Parts p = cdf(h, ti);
    V pdf = table_eval(Pdf, ti);
    pdf = (h < -kActTableHalfRange) | (h > kActTableHalfRange) ? V{} : pdf;
    *d = (p.f + h * pdf) + p.o;  // at +-inf, inf * 0 = NaN as in eager
    return apply(h, p);
  }
  static V chain(V d, V da) { return d * da; }
};

template <>
struct Act<Activation::kGelu, float> : TabulatedGelu<kGeluCdf, kGeluPdf> {};
template <>
struct Act<Activation::kGeluTanh, float> : TabulatedGelu<kGeluTanhCdf, kGeluTanhPdf> {};

template <typename T>
struct Act<Activation::kRelu, T> {
  using V = Vec<T>;
  // h < 0 is false for NaN and -0, which pass through as in torch.relu.
  static V fwd(V h) { return h < T(0) ? V{} : h; }
  static V fwd_grad(V h, V* d) {
    *d = h <= T(0) ? V{} : vsplat(T(1));
    return fwd(h);
  }
  // A select, not a product: the masked gradient is 0 even where da is inf or NaN.
  static V chain(V d, V da) { return d == T(0) ? V{} : da; }
};

template <typename T>
struct Act<Activation::kSilu, T> {
  using V = Vec<T>;
  static V fwd(V h) { return h / (T(1) + vexp(-h)); }
  static V fwd_grad(V h, V* d) {
    const V e = vexp(-h);
    const V s = T(1) / (T(1) + e);
    const V sc = e < T(1) ? e * s : T(1) - s;
    *d = s * (T(1) + h * sc);  // sigmoid (1 + h (1 - sigmoid))
    return fwd(h);  // rounded as in the forward pass, whose batch statistics it meets
  }
  static V chain(V d, V da) { return d * da; }
};

template <Activation A>
using ActTag = std::integral_constant<Activation, A>;

// Calls f(ActTag<A>{}) for the runtime activation, so kernels get it as a constant.
template <typename F>
void with_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::kGelu:
      f(ActTag<Activation::kGelu>{});
      return;
    case Activation::kGeluTanh:
      f(ActTag<Activation::kGeluTanh>{});
      return;
    case Activation::kRelu:
      f(ActTag<Activation::kRelu>{});
      return;
    case Activation::kSilu:
      f(ActTag<Activation::kSilu>{});
      return;
  }
}

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
