// The fused CPU kernels of the mixer block y = x + BN(act(dwconv(x) + b)).
//
// Depthwise means every pass but the BN statistics is local to one (n, c) plane, so the
// unit of work is a plane (NCHW: vectorized along W) or a tile of one image and a block
// of channels (channels_last: vectorized along C). A thread copies its unit's input, with
// the 'same' zero padding, into a float buffer (double for double) once, runs the
// register-blocked convolution from conv_kernels.h on it and applies the elementwise
// epilogue; bf16/half are converted on the way in and rounded once on the way out.
//
// Reductions (BN statistics, dgamma, dbeta, dbias, dweight) are written as per-(n, c)
// partials and merged over n in a fixed order after the parallel loop, so every result
// is bitwise independent of the thread count.
//
// This file holds the per-dtype entry points and the level's KernelTable; the passes are
// in headers it alone includes: kernel_common.h (shared helpers), plane_staging.h (NCHW
// units), tile_staging.h (channels_last units), partial_sums.h (the fixed-order merges),
// forward_passes.h, backward_passes.h, amx_eval.h (the amx level's bf16 eval) and
// column_stats.h (the pointwise and stem blocks' BatchNorm).
#include "mixer_block_cpu.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "backward_passes.h"
#include "column_stats.h"
#include "forward_passes.h"
#include "kernel_common.h"
#if CMK_HAVE_AMX
#include "amx_eval.h"
#endif

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {
namespace {

// Runs the layout's kernel for the activation p.act.
template <typename P, typename Kernels>
void dispatch(const P& p, Kernels kernels) {
  with_activation(p.act, [&](auto a) {
    const auto [cl, nchw] = kernels(a);
    (p.g.channels_last() ? cl : nchw)(p);
  });
}

template <typename scalar_t>
void forward_eval(const ForwardParams& p) {
#if CMK_HAVE_AMX
  if constexpr (std::is_same<scalar_t, c10::BFloat16>::value) {
    return with_activation(p.act, [&](auto a) {
      constexpr Activation A = decltype(a)::value;
      (p.g.channels_last() ? forward_eval_cl_amx<A> : forward_eval_nchw_amx<A>)(p);
    });
  }
#endif
  dispatch(p, [](auto a) {
    constexpr Activation A = decltype(a)::value;
    return std::pair(&forward_eval_cl<scalar_t, A>, &forward_eval_nchw<scalar_t, A>);
  });
}

template <typename scalar_t>
void forward_train(const ForwardParams& p) {
  dispatch(p, [](auto a) {
    constexpr Activation A = decltype(a)::value;
    return std::pair(&forward_train_cl<scalar_t, A>, &forward_train_nchw<scalar_t, A>);
  });
}

template <typename scalar_t>
void backward(const BackwardParams& p) {
  dispatch(p, [](auto a) {
    constexpr Activation A = decltype(a)::value;
    return std::pair(&backward_cl<scalar_t, A>, &backward_nchw<scalar_t, A>);
  });
}

template <typename scalar_t>
constexpr Passes passes() {
  return {forward_eval<scalar_t>, forward_train<scalar_t>, backward<scalar_t>, column_moments<scalar_t>,
          column_affine<scalar_t>};
}

// The extensions this translation unit's flags let the compiler emit, which the CPU must
// have before dispatch.cpp may call into it.
constexpr uint32_t compiled_features() {
  uint32_t f = 0;
#ifdef __SSE3__
  f |= kSse3;
#endif
#ifdef __SSSE3__
  f |= kSsse3;
#endif
#ifdef __SSE4_1__
  f |= kSse41;
#endif
#ifdef __SSE4_2__
  f |= kSse42;
#endif
#ifdef __POPCNT__
  f |= kPopcnt;
#endif
#ifdef __AVX__
  f |= kAvx;
#endif
#ifdef __AVX2__
  f |= kAvx2;
#endif
#ifdef __FMA__
  f |= kFma;
#endif
#ifdef __F16C__
  f |= kF16c;
#endif
#ifdef __BMI__
  f |= kBmi;
#endif
#ifdef __BMI2__
  f |= kBmi2;
#endif
#ifdef __LZCNT__
  f |= kLzcnt;
#endif
#ifdef __MOVBE__
  f |= kMovbe;
#endif
#ifdef __AVX512F__
  f |= kAvx512F;
#endif
#ifdef __AVX512BW__
  f |= kAvx512Bw;
#endif
#ifdef __AVX512CD__
  f |= kAvx512Cd;
#endif
#ifdef __AVX512DQ__
  f |= kAvx512Dq;
#endif
#ifdef __AVX512VL__
  f |= kAvx512Vl;
#endif
#ifdef __AVX512BF16__
  f |= kAvx512Bf16;
#endif
#ifdef __AVX512FP16__
  f |= kAvx512Fp16;
#endif
#ifdef __AVX512VBMI__
  f |= kAvx512Vbmi;
#endif
#ifdef __AVX512VNNI__
  f |= kAvx512Vnni;
#endif
#ifdef __AMX_TILE__
  f |= kAmxTile;
#endif
#ifdef __AMX_BF16__
  f |= kAmxBf16;
#endif
  return f;
}

}  // namespace

#define CMK_STRINGIFY_(x) #x
#define CMK_STRINGIFY(x) CMK_STRINGIFY_(x)

// This level's entry points, constant-initialized; dispatch.cpp declares the same
// object in every compiled level's namespace and picks one.
extern const KernelTable kKernelTable;
const KernelTable kKernelTable = {
    CMK_STRINGIFY(CMK_CPU_CAPABILITY),
    compiled_features(),
    {passes<float>(), passes<double>(), passes<c10::BFloat16>(), passes<c10::Half>()},
};

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
