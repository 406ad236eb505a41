// A CPU stand-in for the part of CUDA the kernels in csrc/cuda use, so that the tests can
// run those kernels, unchanged, on a machine without a GPU. The <cuda_runtime.h>,
// <cuda_fp16.h> and <cuda_bf16.h> of include/ stand for the real ones and include this
// file (csrc/cuda/platform.cuh takes <cuda_runtime.h> when CONVMIXER_KERNELS_CUDA_EMULATOR
// is defined).
//
// What it models (runtime.cpp): the blocks of a grid run one after another; the threads
// of a block are fibers on one OS thread that switch only at __syncthreads, __syncwarp
// and the warp collectives (shuffles, votes, ldmatrix, mma). A barrier completes when
// every thread of the block (or lane of the warp) has arrived at the same call; one
// reached from different lines, or by some threads only, is reported as an error, not a
// hang. Between barriers threads run in an order the caller picks (ascending, descending,
// or shuffled anew each round), and so do blocks: a shared-memory read that lacks its
// barrier sees another value under another order, so results that differ between orders
// expose the race. Shared memory starts filled with 0xff bytes (NaN in every float type
// the kernels use), is bounds-checked where a PTX instruction or ld_shared addresses it,
// and a guard band after it is checked at the end of each block. Launches fail like real
// ones on a bad configuration, and on more than 48 KB of dynamic shared memory without the
// function attribute (or more than the device's maximum with it).
//
// Asynchronous copies (cp.async): a copy is recorded at issue, in the issuing thread's open
// group; commit_group closes the group, and wait_group N (wait_all) performs the thread's
// oldest groups, in order, until N (none) are left: the bytes move at the wait, not at the
// issue, reading global memory then. Until then the destination holds 0xff poison, and a
// read of it through ld_shared, ldmatrix or the pinned loads is reported as an error, as
// are a destination outside shared memory or misaligned, a second copy to bytes still in
// flight, and copies a thread never waited for when its block ends.
//
// What it does not model: timing, memory ordering beyond barriers, and the tensor cores'
// internal rounding (the emulated mma adds exact products in float, in k order).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// `extern __shared__` declares the dynamic shared memory, one array for every block since
// blocks run one at a time: the kernels' `smem` in convmixer_kernels::cuda, defined by
// runtime.cpp (so a kernel declaring it must sit in that namespace itself, not in an
// unnamed one: the link fails otherwise). A __shared__ variable of any other kind would
// become a per-thread local here, so the kernels declare none (tests/test_cuda_emulated.py
// checks).
#define __shared__

// ---------------------------------------------------------------- runtime API types

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrReservedSharedMemoryPerBlock = 111,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace cuda_emu {

// The device the kernels plan for (emulator.h's Options): its index, multiprocessors, shared memory
// per multiprocessor, and the dynamic shared memory a block may opt into, at most
// kMaxDynamicSmem (H100: 227 KB); the driver reserves kReservedSmem of each block's.
int device();  // the current device's index: each kind of device the tests emulate has its own
int multiprocessors();
size_t smem_per_multiprocessor();
size_t smem_per_block_optin();
constexpr size_t kMaxDynamicSmem = 227 * 1024;
constexpr size_t kDefaultDynamicSmem = 48 * 1024;
constexpr size_t kReservedSmem = 1024;

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes);
uint64_t attribute_calls();  // cudaFuncSetAttribute calls so far, for the tests
cudaError_t run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);
cudaError_t take_last_error();

const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

void syncthreads(const char* file, int line);
void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu);
uint32_t shfl_xor_bits(const char* file, int line, unsigned mask, uint32_t v, int lane_mask, int width);
bool any_sync(const char* file, int line, unsigned mask, bool pred);
void ldmatrix(const char* file, int line, int matrices, uint32_t* r, uint32_t addr);
void mma_m16n8k16(const char* file, int line, bool bf16, float* d, const uint32_t* a, const uint32_t* b);

uint32_t shared_offset(const void* p);  // the .shared address of p (must lie in the block's)

// A read of `bytes` of shared memory at p: inside the block's, and no cp.async in flight
// to any of them.
void shared_read(const char* file, int line, const void* p, size_t bytes);
// cp.async.{ca,cg}.shared.global [dst], [src], bytes, src_bytes (the rest zero-filled),
// cp.async.commit_group, and cp.async.wait_group `groups` (-1: cp.async.wait_all).
void cp_async(const char* file, int line, void* dst, const void* src, int bytes, int src_bytes, bool cg);
void cp_async_commit();
void cp_async_wait(int groups);

template <typename T>
T shfl_xor_sync(const char* file, int line, unsigned mask, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) == 4, "the kernels shuffle 32-bit values");
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits = shfl_xor_bits(file, line, mask, bits, lane_mask, width);
  std::memcpy(&v, &bits, 4);
  return v;
}

}  // namespace cuda_emu

inline cudaError_t cudaGetLastError() { return cuda_emu::take_last_error(); }
const char* cudaGetErrorString(cudaError_t err);
inline cudaError_t cudaGetDevice(int* dev) {
  *dev = cuda_emu::device();
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = cuda_emu::multiprocessors(); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = static_cast<int>(cuda_emu::smem_per_multiprocessor());
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(cuda_emu::smem_per_block_optin()); return cudaSuccess;
    case cudaDevAttrReservedSharedMemoryPerBlock: *value = static_cast<int>(cuda_emu::kReservedSmem); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return cuda_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

// ---------------------------------------------------------------- 16-bit floats

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline __half __ushort_as_half(uint16_t b) { return {b}; }
inline uint16_t __half_as_ushort(__half h) { return h.bits; }
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // round to nearest even
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}

inline __nv_bfloat16 __ushort_as_bfloat16(uint16_t b) { return {b}; }
inline uint16_t __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return {static_cast<uint16_t>(u >> 16)};
}

// ---------------------------------------------------------------- device intrinsics

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t bytes = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>(bytes >> (8 * ((s >> (4 * i)) & 7u)) & 0xffu) << (8 * i);
  return r;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

#define threadIdx (::cuda_emu::thread_idx())
#define blockIdx (::cuda_emu::block_idx())
#define blockDim (::cuda_emu::block_dim())
#define gridDim (::cuda_emu::grid_dim())
#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::cuda_emu::syncwarp(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuda_emu::shfl_xor_sync(__FILE__, __LINE__, __VA_ARGS__)
#define __any_sync(mask, pred) ::cuda_emu::any_sync(__FILE__, __LINE__, (mask), (pred))

// ---------------------------------------------------------------- platform.cuh's interface

namespace convmixer_kernels {
namespace cuda {

inline uint32_t smem_addr(const void* p) { return ::cuda_emu::shared_offset(p); }

template <typename V>
inline V ld_shared(const V* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::cuda_emu::shared_read(file, line, p, sizeof(V));
  return *p;
}

inline float4 lds_pinned_f32x4(const float* p) { return ld_shared(reinterpret_cast<const float4*>(p)); }
inline uint2 lds_pinned_u32x2(const uint32_t* p) { return ld_shared(reinterpret_cast<const uint2*>(p)); }

template <int BYTES>
inline void cp_async(void* dst, const void* src, int src_bytes, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  ::cuda_emu::cp_async(file, line, dst, src, BYTES, src_bytes, BYTES == 16);
}
inline void cp_async_commit() { ::cuda_emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  ::cuda_emu::cp_async_wait(N);
}
inline void cp_async_wait_all() { ::cuda_emu::cp_async_wait(-1); }

// rcp.approx.ftz and ex2.approx.ftz, correctly rounded here (the hardware's 1-2 ulp are
// not modelled), subnormal inputs and results flushed to zero as ftz does.
inline float flush_subnormal(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }
inline float rcp_approx(float x) { return flush_subnormal(1.0f / flush_subnormal(x)); }
inline float exp2_approx(float x) { return flush_subnormal(std::exp2(flush_subnormal(x))); }

// The warp collectives below name their caller's line in reports (and every lane of the
// warp must reach the same one).
inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  ::cuda_emu::ldmatrix(file, line, 4, r, addr);
}
inline void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  ::cuda_emu::ldmatrix(file, line, 2, r, addr);
}

template <typename T>
inline void mma_16816(float* d, const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "16-bit MMA types only");
  ::cuda_emu::mma_m16n8k16(file, line, std::is_same<T, __nv_bfloat16>::value, d, a, b);
}

// A launch: the arguments are copied as a real launch copies them, then every thread of
// every block runs the kernel on its copy.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                          const Args&... args) {
  const std::tuple<std::decay_t<Params>...> packed(args...);
  return ::cuda_emu::run_grid(reinterpret_cast<const void*>(kernel), grid, block, smem,
                              [&] { std::apply(kernel, packed); });
}

}  // namespace cuda
}  // namespace convmixer_kernels
