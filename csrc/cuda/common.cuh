// Device helpers shared by the kernels: element types as raw bits, conversions to float,
// shared-memory rows to float, and warp reductions (the PTX primitives are in platform.cuh).
#pragma once

#include <cstdint>

#include "platform.cuh"

namespace convmixer_kernels {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Tiles move through shared memory as raw bits (16 bytes = kVec elements at a time);
// arithmetic is in float. kMma: the type has an m16n8k16 tensor-core MMA with float
// accumulation (products of two 16-bit values are exact in float).
template <typename T>
struct Dtype;

template <>
struct Dtype<float> {
  using Bits = uint32_t;
  static constexpr bool kMma = false;
  static constexpr const char* kName = "float32";
  static __device__ __forceinline__ float to_float(uint32_t b) { return __uint_as_float(b); }
  static __device__ __forceinline__ uint32_t from_float(float v) { return __float_as_uint(v); }
};

template <>
struct Dtype<__half> {
  using Bits = uint16_t;
  static constexpr bool kMma = true;
  static constexpr const char* kName = "float16";
  static __device__ __forceinline__ float to_float(uint16_t b) { return __half2float(__ushort_as_half(b)); }
  static __device__ __forceinline__ uint16_t from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
};

template <>
struct Dtype<__nv_bfloat16> {
  using Bits = uint16_t;
  static constexpr bool kMma = true;
  static constexpr const char* kName = "bfloat16";
  static __device__ __forceinline__ float to_float(uint16_t b) {
    return __bfloat162float(__ushort_as_bfloat16(b));
  }
  static __device__ __forceinline__ uint16_t from_float(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
};

template <typename T>
__host__ __device__ constexpr int vec_elems() {
  return 16 / static_cast<int>(sizeof(typename Dtype<T>::Bits));
}

__device__ __forceinline__ bool is_finite(float v) { return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u; }

// Element e (0 or 1) of a 32-bit word holding two 16-bit elements, or the word itself.
template <typename Bits>
__device__ __forceinline__ Bits word_elem(uint32_t w, int e) {
  if constexpr (sizeof(Bits) == 2) {
    return static_cast<Bits>(e ? (w >> 16) : (w & 0xffffu));
  } else {
    return w;
  }
}

// Loads NV elements of shared memory starting at p (aligned to CHUNK elements) into float,
// CHUNK at a time.
template <typename T, int CHUNK, int NV>
__device__ __forceinline__ void load_row(const typename Dtype<T>::Bits* p, float (&v)[NV]) {
  using Bits = typename Dtype<T>::Bits;
  static_assert(NV % CHUNK == 0, "row buffer must be whole chunks");
  constexpr int kBytes = CHUNK * static_cast<int>(sizeof(Bits));
#pragma unroll
  for (int c = 0; c < NV / CHUNK; ++c) {
    uint32_t w[4];
    if constexpr (kBytes == 16) {
      const uint4 u = ld_shared(reinterpret_cast<const uint4*>(p + c * CHUNK));
      w[0] = u.x; w[1] = u.y; w[2] = u.z; w[3] = u.w;
    } else if constexpr (kBytes == 8) {
      const uint2 u = ld_shared(reinterpret_cast<const uint2*>(p + c * CHUNK));
      w[0] = u.x; w[1] = u.y;
    } else {
      static_assert(kBytes == 4, "chunk of 4, 8 or 16 bytes");
      w[0] = ld_shared(reinterpret_cast<const uint32_t*>(p + c * CHUNK));
    }
#pragma unroll
    for (int e = 0; e < CHUNK; ++e) {
      if constexpr (sizeof(Bits) == 2) {
        v[c * CHUNK + e] = Dtype<T>::to_float(word_elem<Bits>(w[e / 2], e % 2));
      } else {
        v[c * CHUNK + e] = Dtype<T>::to_float(w[e]);
      }
    }
  }
}

// Two horizontally adjacent elements of shared memory (the first at an even column of an
// even pitch).
template <typename T>
__device__ __forceinline__ void load_pair(const typename Dtype<T>::Bits* p, float& a, float& b) {
  using Bits = typename Dtype<T>::Bits;
  if constexpr (sizeof(Bits) == 2) {
    const uint32_t w = ld_shared(reinterpret_cast<const uint32_t*>(p));
    a = Dtype<T>::to_float(word_elem<Bits>(w, 0));
    b = Dtype<T>::to_float(word_elem<Bits>(w, 1));
  } else {
    const float2 f = ld_shared(reinterpret_cast<const float2*>(p));
    a = f.x;
    b = f.y;
  }
}

template <typename T>
__device__ __forceinline__ void store_pair(typename Dtype<T>::Bits* p, float a, float b) {
  using Bits = typename Dtype<T>::Bits;
  if constexpr (sizeof(Bits) == 2) {
    *reinterpret_cast<uint32_t*>(p) =
        static_cast<uint32_t>(Dtype<T>::from_float(a)) | (static_cast<uint32_t>(Dtype<T>::from_float(b)) << 16);
  } else {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  }
}

// Sum over the warp; every lane gets the same fixed-order tree, so the result is the
// same bits on every run.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int s = 0; s < 5; ++s) v += __shfl_xor_sync(kFullMask, v, 16 >> s);
  return v;
}

// Reduce-scatter of 32 values per lane: lane l returns the sum over the warp of v[l].
// Costs 31 shuffles instead of 32 * 5 for 32 separate warp sums. Each step halves the
// live values: lanes with bit M keep the upper half and receive it from their partner.
// M is a template constant so every index into v is one and v stays in registers.
template <int M>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[32], int lane) {
  const bool upper = (lane & M) != 0;
#pragma unroll
  for (int q = 0; q < M; ++q) {
    const float send = upper ? v[q] : v[q + M];
    const float keep = upper ? v[q + M] : v[q];
    v[q] = keep + __shfl_xor_sync(kFullMask, send, M);
  }
  if constexpr (M > 1) reduce_scatter_step<M / 2>(v, lane);
}

__device__ __forceinline__ float warp_reduce_scatter32(float (&v)[32], int lane) {
  reduce_scatter_step<16>(v, lane);
  return v[0];
}

// Chan et al.'s merge of (count, mean, M2) summaries. Count is float inside a tile kernel
// (a slice holds at most items_per_block * TH * TW <= 2^24 values of a channel, exact in
// float: forward_train checks it) and int64_t in the merge over slices, exact for any
// N * H * W (a float count stops growing at 2^24).
template <typename Count>
struct WelfordT {
  Count n = 0;
  float mean = 0.0f, m2 = 0.0f;
  __device__ __forceinline__ void merge(Count nb, float mean_b, float m2_b) {
    if (nb == 0) return;
    const Count nn = n + nb;
    const float d = mean_b - mean;
    const float f = ratio(nb, nn);
    mean += d * f;
    m2 += m2_b + d * d * static_cast<float>(n) * f;
    n = nn;
  }
  static __device__ __forceinline__ float ratio(float a, float b) { return a / b; }
  static __device__ __forceinline__ float ratio(int64_t a, int64_t b) {
    return static_cast<float>(static_cast<double>(a) / static_cast<double>(b));
  }
};
using Welford = WelfordT<float>;

}  // namespace cuda
}  // namespace convmixer_kernels
