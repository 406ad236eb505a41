// What the kernels take from the CUDA platform beyond portable C++: the runtime and
// 16-bit float headers, the PTX instructions (pinned shared-memory loads, ldmatrix, mma),
// and the kernel launch.
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
