// Small kernels with known faults, so the tests can show that the emulator reports each
// kind of fault it claims to (device.h), and that thread order exposes a missing barrier.
#include <cstring>
#include <string>

#include "device.h"
#include "emulator.h"

namespace convmixer_kernels {
namespace cuda {
// Static, not in an unnamed namespace: `extern __shared__ smem` must name the emulator's
// convmixer_kernels::cuda::smem.
namespace selftest {
constexpr int kThreads = 256;
}
using selftest::kThreads;


// Each thread writes its slot and reads its neighbour's. Without the barrier the value
// read depends on whether the neighbour ran first: poison (-1) or the neighbour's value.
template <bool BARRIER>
static __global__ void neighbour_read(int32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* s = reinterpret_cast<int32_t*>(smem);
  const int t = threadIdx.x;
  s[t] = 3 * t + 1;
  if (BARRIER) __syncthreads();
  out[t] = s[(t + 1) % kThreads];
}

static __global__ void divergent_barrier(int32_t*) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

static __global__ void early_exit(int32_t*) {
  if (threadIdx.x == 7) return;
  __syncthreads();
}

static __global__ void shared_overflow(int32_t*) {
  extern __shared__ __align__(16) unsigned char smem[];
  if (threadIdx.x == 0) smem[1024 + 3] = 1;  // launched with 1024 bytes
}

static __global__ void warp_sums(int32_t* out) {
  int32_t v = threadIdx.x;
  for (int m = 16; m >= 1; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  out[threadIdx.x] = v;
}

static __global__ void partial_mask(int32_t* out) { out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1, 1); }

// What the cp.async kernels copy: source[i] = 5 i + 2.
alignas(16) static int32_t source[kThreads * 4];

static void fill_source() {
  for (int i = 0; i < kThreads * 4; ++i) source[i] = 5 * i + 2;
}

// Thread t copies source[4t, 4t + 4) to shared memory, only its first 4 (t % 4) words
// (all four where t % 4 = 0) from the source and the rest zero-filled, then returns the
// sum of the four words its neighbour copied: visible after the wait and the barrier.
static __global__ void cp_async_copy(int32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* s = reinterpret_cast<int32_t*>(smem);
  const int t = threadIdx.x;
  cp_async<16>(s + 4 * t, source + 4 * t, t % 4 ? 4 * (t % 4) : 16);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  const int u = (t + 1) % kThreads;
  int32_t sum = 0;
  for (int i = 0; i < 4; ++i) sum += ld_shared(s + 4 * u + i);
  out[t] = sum;
}

// Two groups, then wait_group 1: the first group's bytes have arrived, the second's not.
static __global__ void cp_async_read_before_wait(int32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* s = reinterpret_cast<int32_t*>(smem);
  const int t = threadIdx.x;
  cp_async<16>(s + 4 * t, source + 4 * t, 16);
  cp_async_commit();
  cp_async<8>(s + 1024 + 2 * t, source + 2 * t, 8);
  cp_async_commit();
  cp_async_wait<1>();
  out[t] = ld_shared(s + 4 * t) + ld_shared(s + 1024 + 2 * t);
}

static __global__ void cp_async_outside(int32_t*) {
  extern __shared__ __align__(16) unsigned char smem[];
  if (threadIdx.x == 0) cp_async<16>(smem + 1024 - 8, source, 16);  // launched with 1024 bytes
  cp_async_wait_all();
}

static __global__ void cp_async_never_waited(int32_t*) {
  extern __shared__ __align__(16) unsigned char smem[];
  cp_async<4>(smem + 4 * threadIdx.x, source + threadIdx.x, 4);
  cp_async_commit();
}

template <int ID>  // one kernel per test, so an attribute set for one does not carry over
static __global__ void big_smem(int32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  smem[64 * 1024 - 1] = 1;
  out[threadIdx.x] = 0;
}

cudaError_t run_selftest(const std::string& name, int32_t* out) {
  const dim3 grid(1), block(kThreads);
  if (name == "neighbour_read") return launch_kernel(neighbour_read<false>, grid, block, 1024, nullptr, out);
  if (name == "neighbour_read_with_barrier")
    return launch_kernel(neighbour_read<true>, grid, block, 1024, nullptr, out);
  if (name == "divergent_barrier") return launch_kernel(divergent_barrier, grid, block, 0, nullptr, out);
  if (name == "early_exit") return launch_kernel(early_exit, grid, block, 0, nullptr, out);
  if (name == "shared_overflow") return launch_kernel(shared_overflow, grid, block, 1024, nullptr, out);
  if (name == "warp_sums") return launch_kernel(warp_sums, grid, block, 0, nullptr, out);
  if (name == "partial_mask") return launch_kernel(partial_mask, grid, block, 0, nullptr, out);
  fill_source();
  if (name == "cp_async_copy") return launch_kernel(cp_async_copy, grid, block, 4096, nullptr, out);
  if (name == "cp_async_read_before_wait")
    return launch_kernel(cp_async_read_before_wait, grid, block, 8192, nullptr, out);
  if (name == "cp_async_outside") return launch_kernel(cp_async_outside, grid, block, 1024, nullptr, out);
  if (name == "cp_async_never_waited") return launch_kernel(cp_async_never_waited, grid, block, 1024, nullptr, out);
  if (name == "big_smem") return launch_kernel(big_smem<0>, grid, block, 64 * 1024, nullptr, out);
  if (name == "big_smem_with_attribute") {
    const cudaError_t err = cudaFuncSetAttribute(big_smem<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
    if (err != cudaSuccess) return err;
    return launch_kernel(big_smem<1>, grid, block, 64 * 1024, nullptr, out);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace convmixer_kernels
