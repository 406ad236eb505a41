// What every pass of the CPU kernels shares: the accumulation type, the kernel sizes
// with unrolled kernels, the OpenMP loop over units, row loads and stores with the
// dtype conversion, and the per-channel BN quantities.
//
// Included once per capability level, by mixer_block_cpu.cpp only: its contents sit in
// that translation unit's anonymous namespace.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "simd.h"
#if defined(__AVX512BW__)
#include "bf16_convert.h"
#endif

// The levels compiled with AMX (setup.py's "amx") run the bf16 eval forward on its tiles
// (amx_eval.h); everything else is the same code on every level.
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define CMK_HAVE_AMX 1
#else
#define CMK_HAVE_AMX 0
#endif
// The levels with AVX-512 BF16 but no AMX ("avx512_bf16": Zen 4) convolve bf16 NCHW
// planes with vdpbf16ps on pairs of taps (bf16_dot_conv.h), in every pass. The amx level
// keeps FMAs outside its tile eval: on Sapphire Rapids vdpbf16ps issues at half the FMA
// rate and measured only break-even (README, Intel Xeon results).
#if defined(__AVX512BF16__) && !CMK_HAVE_AMX
#define CMK_HAVE_BF16_DOT 1
#else
#define CMK_HAVE_BF16_DOT 0
#endif

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;

template <int N>
using IntC = std::integral_constant<int, N>;

// Calls f(IntC<k>{}) with the kernel sizes that get unrolled kernels (float only: double
// serves gradcheck, where the generic path is fast enough), else f(IntC<0>{}).
template <typename T, typename F>
void with_kernel_size(int k, F&& f) {
  if constexpr (std::is_same<T, float>::value) {
    switch (k) {
      case 3:
        return f(IntC<3>{});
      case 5:
        return f(IntC<5>{});
      case 7:
        return f(IntC<7>{});
      case 9:
        return f(IntC<9>{});
      default:
        break;
    }
  }
  f(IntC<0>{});
}

// Runs body(unit, thread_state) for unit in [0, units) over the OpenMP team that torch's
// thread setting asks for, with one State per thread built by make_state().
template <typename MakeState, typename Body>
void parallel_units(int64_t units, MakeState&& make_state, Body&& body) {
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), units)));
#pragma omp parallel num_threads(threads)
  {
    auto state = make_state();
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) body(u, state);
  }
}

template <typename T>
IVec<T> lane_index() {
  IVec<T> idx;
  for (int l = 0; l < kLanes<T>; ++l) idx[l] = l;
  return idx;
}

// Contiguous bf16 rows convert 16 lanes at a time where AVX-512BW is there (bitwise the
// same rounding as the casts); everything else converts element by element.
template <typename T, typename S>
constexpr bool kBf16ToFloat = std::is_same<S, c10::BFloat16>::value && std::is_same<T, float>::value;

template <typename T, typename S>
inline void load_row(T* dst, const S* src, int64_t n, int64_t stride) {
#if defined(__AVX512BW__)
  if constexpr (kBf16ToFloat<T, S>) {
    if (stride == 1) return bf16_row_to_float(dst, reinterpret_cast<const uint16_t*>(src), n);
  }
#endif
  if (stride == 1) {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j * stride]);
  }
}

template <typename T, typename S>
inline void store_row(S* dst, int64_t stride, const T* src, int64_t n) {
#if defined(__AVX512BW__)
  if constexpr (kBf16ToFloat<T, S>) {
    if (stride == 1) return float_row_to_bf16(reinterpret_cast<uint16_t*>(dst), src, n);
  }
#endif
  if (stride == 1) {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<S>(src[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j * stride] = static_cast<S>(src[j]);
  }
}

// Per-channel BN quantities in the accumulation type.
template <typename T>
struct ChannelParams {
  std::vector<T> gamma, beta, mean, rstd;
};

template <typename T>
ChannelParams<T> channel_params(int64_t C, const void* gamma, const void* beta, const void* mean,
                                const void* var, double eps) {
  ChannelParams<T> p;
  p.gamma.assign(C, T(1));
  p.beta.assign(C, T(0));
  p.mean.assign(C, T(0));
  p.rstd.assign(C, T(1));
  for (int64_t c = 0; c < C; ++c) {
    if (gamma) p.gamma[c] = static_cast<const T*>(gamma)[c];
    if (beta) p.beta[c] = static_cast<const T*>(beta)[c];
    if (mean) p.mean[c] = static_cast<const T*>(mean)[c];
    if (var) p.rstd[c] = T(1) / std::sqrt(static_cast<const T*>(var)[c] + static_cast<T>(eps));
  }
  return p;
}

}  // namespace
}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
