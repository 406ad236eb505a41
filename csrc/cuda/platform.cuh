// What the kernels take from the CUDA platform beyond portable C++: the runtime and
// 16-bit float headers, shared-memory reads, the PTX instructions (pinned shared-memory
// loads, cp.async, ldmatrix, mma), and the kernel launch.
//
// Compiled with CONVMIXER_KERNELS_CUDA_EMULATOR defined (by the tests, with g++, with
// tests/harness/cuda_emulator/include on the include path), the same kernels get these
// from the emulator's stand-in <cuda_runtime.h> instead and run on the CPU: this file is
// the only place the two builds differ.
#pragma once

#ifdef CONVMIXER_KERNELS_CUDA_EMULATOR
#include <cuda_runtime.h>  // the emulator's: it brings the whole device model
#else

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace convmixer_kernels {
namespace cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// A shared-memory read: plain here; the emulator checks it (inside the block's shared
// memory, not the destination of a cp.async not yet waited for).
template <typename V>
__device__ __forceinline__ V ld_shared(const V* p) {
  return *p;
}

// Shared-memory loads the compiler may not hoist out of the item loop: values that are
// the same for every item (filters) are reloaded where used instead of pinning registers
// for the whole kernel.
__device__ __forceinline__ float4 lds_pinned_f32x4(const float* p) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(smem_addr(p))
               : "memory");
  return v;
}

__device__ __forceinline__ uint2 lds_pinned_u32x2(const uint32_t* p) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(smem_addr(p)) : "memory");
  return v;
}

// Asynchronous global -> shared copies of BYTES (4, 8 or 16; both addresses aligned to
// it): the first src_bytes come from src, the rest are zero-filled (src_bytes = 0 reads
// nothing: the padding). 16-byte copies bypass L1 (.cg); smaller ones may only use .ca.
// Each thread's copies form groups (commit); wait<N> returns once at most N of its newest
// groups are in flight. Other threads see the bytes after a barrier that follows the wait.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(dst)), "l"(src), "n"(BYTES),
                 "r"(src_bytes)
                 : "memory");
  }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// commit_group, then wait for every group
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// The MUFU reciprocal and base-2 exponential (ftz; about 1 and 2 ulp), for the 16-bit
// outputs' GELU (activations.cuh).
__device__ __forceinline__ float rcp_approx(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ float exp2_approx(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// The "memory" clobber keeps these shared-memory reads on their side of __syncthreads.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr)
               : "memory");
}

// d += a * b for one 16x8x16 tile: a row-major 16x16, b column-major 16x8, d float.
template <typename T>
__device__ __forceinline__ void mma_16816(float* d, const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_16816<__half>(float* d, const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float* d, const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) and returns its launch error.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          const Args&... args) {
  kernel<<<grid, block, smem, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace convmixer_kernels

#endif  // CONVMIXER_KERNELS_CUDA_EMULATOR
