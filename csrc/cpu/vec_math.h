// Vectorizable exp and erfc for the activations.
//
// float: branch-free range reduction + polynomial, within about 2 ulp over the whole
// range and with IEEE behaviour at the ends (overflow to inf, underflow to 0, NaN in ->
// NaN out), so the kernels stay SIMD through the activation. double: the std:: functions
// lane by lane, since double serves gradcheck and must be exact to ~1e-15.
#pragma once

#include <cmath>

#include "simd.h"

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {

// exp(x) = 2^n * exp(r), n = round(x * log2(e)), |r| <= ln(2)/2.
inline Vec<float> vexp(Vec<float> x) {
  using V = Vec<float>;
  using I = IVec<float>;
  // Outside [-104, 89] exp(x) rounds to 0 or overflows; clamping keeps n in [-150, 128]
  // so that the two-factor scale below is built from valid exponents. A NaN fails both
  // comparisons and passes through unchanged.
  const V lo = vsplat(-104.0f), hi = vsplat(89.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  // Adding 1.5 * 2^23 rounds x * log2(e) to an integer held in the low mantissa bits.
  const V shifter = vsplat(12582912.0f);
  const V t = x * 1.44269504088896341f + shifter;
  const V n = t - shifter;
  const I ni = (I)t - (I)shifter;
  // ln 2 split so that n * kLn2Hi is exact for |n| <= 2^8.
  const float kLn2Hi = 0.693145751953125f;
  const float kLn2Lo = 1.42860682030941723e-6f;
  V r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  // Taylor to degree 7: the remainder |r|^8 / 8! < 6e-9 is below float rounding.
  V p = vsplat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n as 2^h * 2^(n-h): each factor's exponent stays in the normal range, and the
  // product under/overflows (and rounds into denormals) exactly once.
  const I h = ni >> 1;
  const I e1 = (h + 127) << 23;
  const I e2 = (ni - h + 127) << 23;
  // Casting between same-size vector types reinterprets the bits.
  return p * (V)e1 * (V)e2;
}

inline Vec<double> vexp(Vec<double> x) {
  Vec<double> r;
  for (int l = 0; l < kLanes<double>; ++l) r[l] = std::exp(x[l]);
  return r;
}

// erfc(a) for a >= 0 (or NaN), given e = exp(-a * a).
//
// float: erfc(a) = exp(-a^2) * g(a), where g(a) = erfc(a) exp(a^2) is smooth and
// bounded on [0, inf). g is approximated by a degree-10 polynomial in
// u = 1 / (1 + 0.4 a) - 0.596, fitted (weighted least squares toward minimax) on
// a in [0, 10.5]; its relative error is 2.1e-9. Past 10.5, exp(-a^2) is 0 in float.
inline Vec<float> verfc_nonneg(Vec<float> a, Vec<float> e) {
  using V = Vec<float>;
  const V amax = vsplat(10.5f);
  a = a > amax ? amax : a;
  const V u = 1.0f / (1.0f + 0.4f * a) - 0.596153846f;
  V g = vsplat(-3.790363024e-02f);
  g = g * u + 1.982571068e-02f;
  g = g * u + 9.345230599e-02f;
  g = g * u - 4.985095922e-02f;
  g = g * u - 2.249309325e-01f;
  g = g * u + 1.201608263e-02f;
  g = g * u + 6.736580291e-01f;
  g = g * u + 1.254445292e+00f;
  g = g * u + 1.331726405e+00f;
  g = g * u + 9.671601544e-01f;
  g = g * u + 2.925478586e-01f;
  return e * g;
}

inline Vec<double> verfc_nonneg(Vec<double> a, Vec<double> /*e*/) {
  Vec<double> r;
  for (int l = 0; l < kLanes<double>; ++l) r[l] = std::erfc(a[l]);
  return r;
}

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
