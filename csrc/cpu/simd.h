// Fixed-width SIMD vectors for the CPU kernels, built on the GCC/Clang vector extension
// at the widest width the compile flags enable (AVX-512: 64 bytes, AVX: 32, else 16).
//
// The kernels are written once against Vec<T> with their register blocking spelled out
// (accumulator tiles, reused loads); plain loops do not reliably get that blocking from
// the auto-vectorizer. setup.py builds with GCC/Clang flags, so the extension is
// available wherever this file is compiled.
#pragma once

// Everything that depends on the instruction set lives in a namespace named after the
// capability level it is compiled for (setup.py compiles the kernels once per level of
// its CPU_LEVELS, and dispatch.cpp picks one at load time), so the linker never merges
// one level's inline functions with another's.
#ifndef CMK_CPU_CAPABILITY
#error "compile the csrc/cpu kernels with -DCMK_CPU_CAPABILITY=<level> (setup.py does)"
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct VecTraits;
template <>
struct VecTraits<float> {
  typedef float vec __attribute__((vector_size(kVecBytes)));
  typedef int32_t ivec __attribute__((vector_size(kVecBytes)));
};
template <>
struct VecTraits<double> {
  typedef double vec __attribute__((vector_size(kVecBytes)));
  typedef int64_t ivec __attribute__((vector_size(kVecBytes)));
};

template <typename T>
using Vec = typename VecTraits<T>::vec;
template <typename T>
using IVec = typename VecTraits<T>::ivec;
template <typename T>
constexpr int kLanes = kVecBytes / static_cast<int>(sizeof(T));

template <typename T>
inline Vec<T> vsplat(T s) {
  return Vec<T>{} + s;
}

// Unaligned load/store; memcpy compiles to one vector move.
template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void vstore(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// Makes the compiler materialize v in a register. GCC otherwise folds a load that feeds
// several FMAs into each of them as a memory operand, repeating the load; for unaligned
// loads that split cache lines this halves the throughput of the correlation kernels.
template <typename V>
inline void keep_in_register(V& v) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__("" : "+v"(v));
#else
  (void)v;
#endif
}

// Lane-wise select; a NaN in a comparison is false, which the callers rely on.
template <typename T>
inline Vec<T> vselect(const IVec<T>& mask, const Vec<T>& a, const Vec<T>& b) {
  return mask ? a : b;
}

// Horizontal sum in a fixed lane order, so a reduction never depends on scheduling.
template <typename V>
inline auto hsum(const V& v) {
  using E = std::remove_cv_t<std::remove_reference_t<decltype(v[0])>>;
  E s = 0;
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(E)); ++l) s += v[l];
  return s;
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Zero-initialized scratch whose data() is aligned to a vector (and cache line) boundary.
// The kernels write only the interior of their padded buffers, so the zero border made
// here stays zero for every plane a thread processes.
template <typename T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(size_t n) { resize(n); }
  void resize(size_t n) {
    constexpr size_t kAlign = 64 / sizeof(T);
    store_.assign(n + kAlign, T(0));
    const auto addr = reinterpret_cast<uintptr_t>(store_.data());
    data_ = store_.data() + ((64 - addr % 64) % 64) / sizeof(T);
  }
  T* data() { return data_; }

 private:
  std::vector<T> store_;
  T* data_ = nullptr;
};

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
