// The fused CPU kernels of the mixer block (OpenMP over planes, SIMD inner loops), as
// the bindings see them: one table of pass functions per capability level, and the
// level chosen for this CPU.
//
// mixer_block_cpu.cpp is compiled once per level (baseline x86-64, AVX2+FMA, AVX-512,
// ...: CPU_LEVELS in setup.py) into its own namespace; dispatch.cpp, compiled with no
// ISA flags, reads the CPU's features once and picks the best level they allow
// (CONVMIXER_KERNELS_CPU_CAPABILITY overrides), as ATen does with CPU_CAPABILITY.
//
// Every result is independent of the number of OpenMP threads: per-plane partial sums
// are merged in a fixed order.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../mixer_block_params.h"

namespace convmixer_kernels {
namespace cpu {

// The dtypes the kernels are instantiated for, as indices into KernelTable::passes. The
// accumulation type is double for kDouble and float otherwise.
enum class DType : int32_t { kFloat = 0, kDouble = 1, kBFloat16 = 2, kHalf = 3 };
constexpr int kNumDTypes = 4;

// BatchNorm over the columns of a (rows, cols) matrix (column_stats.h). Rows are strided,
// columns contiguous; scalar_t is u's and v's dtype, acc_t as for the mixer block.
// sum_u[c] = sum_r (u[r, c] - u_center[c]), sum_uv[c] = sum_r (u[r, c] - u_center[c]) *
// (v[r, c] - v_center[c]), in double; a null center is 0.
struct ColumnMomentsParams {
  int64_t rows;
  int64_t cols;
  const void* u;  // scalar_t
  int64_t u_row_stride;
  const void* v;  // scalar_t, may be u
  int64_t v_row_stride;
  const void* u_center;  // [cols] acc_t or nullptr
  const void* v_center;  // [cols] acc_t or nullptr
  double* sum_u;         // [cols]
  double* sum_uv;        // [cols]
};

// out[r, c] = (v[r, c] - v_center[c]) * v_scale[c] + shift[c] (+ u[r, c] * u_scale[c]
// where u is given), in acc_t, rounded once to scalar_t: BatchNorm's output (v = a) and
// its input gradient (v = a, u = dy).
struct ColumnAffineParams {
  int64_t rows;
  int64_t cols;
  const void* v;  // scalar_t
  int64_t v_row_stride;
  const void* v_center;  // [cols] acc_t
  const void* v_scale;   // [cols] acc_t
  const void* shift;     // [cols] acc_t
  const void* u;         // scalar_t, or nullptr
  int64_t u_row_stride;
  const void* u_scale;  // [cols] acc_t, or nullptr with u
  void* out;            // (rows, cols) scalar_t, contiguous
};

struct Passes {
  // Eval: y = x + act(dwconv(x) + b) * s + t with s = gamma * rsqrt(var_in + eps),
  // t = beta - mean_in * s. One pass.
  void (*forward_eval)(const ForwardParams&);
  // Training: pass 1 reduces the per-channel mean and biased variance of a = act(h)
  // (Welford per plane, Chan merge across planes) into mean_out / var_out; pass 2
  // recomputes a and writes y = x + (a - mean) * rstd * gamma + beta.
  void (*forward_train)(const ForwardParams&);
  // Backward (see BackwardParams): pass 1 reduces dbeta and dgamma; pass 2 recomputes h,
  // forms dh and reduces dbias and dweight; pass 3 writes dx = dy + conv_transpose(dh).
  void (*backward)(const BackwardParams&);
  // The pointwise and stem blocks' BatchNorm statistics and input gradient.
  void (*column_moments)(const ColumnMomentsParams&);
  void (*column_affine)(const ColumnAffineParams&);
};

// Instruction-set extensions a level's code may use; dispatch.cpp reads them from cpuid.
enum CpuFeature : uint32_t {
  kSse3 = 1u << 0,
  kSsse3 = 1u << 1,
  kSse41 = 1u << 2,
  kSse42 = 1u << 3,
  kPopcnt = 1u << 4,
  kAvx = 1u << 5,
  kAvx2 = 1u << 6,
  kFma = 1u << 7,
  kF16c = 1u << 8,
  kBmi = 1u << 9,
  kBmi2 = 1u << 10,
  kLzcnt = 1u << 11,
  kMovbe = 1u << 12,
  kAvx512F = 1u << 13,
  kAvx512Bw = 1u << 14,
  kAvx512Cd = 1u << 15,
  kAvx512Dq = 1u << 16,
  kAvx512Vl = 1u << 17,
  kAvx512Bf16 = 1u << 18,
  kAvx512Fp16 = 1u << 19,
  kAvx512Vbmi = 1u << 20,
  kAvx512Vnni = 1u << 21,
  kAmxTile = 1u << 22,  // cpuid, XCR0's tile state, and the kernel's permission (arch_prctl)
  kAmxBf16 = 1u << 23,
};

// One capability level: mixer_block_cpu.cpp compiled with that level's flags.
struct KernelTable {
  const char* level;           // "baseline", "avx2", "avx512", "avx512_bf16", "amx", "custom"
  uint32_t required_features;  // CpuFeature bits its compile flags let the compiler use
  Passes passes[kNumDTypes];
};

// The active level's passes for a dtype.
const Passes& kernels(DType dtype);

// The active level's name.
std::string capability();

// Every compiled level, best first, with whether this CPU can run it.
std::vector<std::pair<std::string, bool>> capabilities();

// Makes `level` the active one; fails with a clear error for a level that was not
// compiled or that this CPU cannot run. Tests use it to run every level in one process.
void set_capability(const std::string& level);

}  // namespace cpu
}  // namespace convmixer_kernels
