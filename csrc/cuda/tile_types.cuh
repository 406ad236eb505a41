// What every part of the tile engine (tile.cuh) shares: the passes (Mode), the tile
// shapes, the kernel arguments, where a lane's accumulators sit in its task, and the
// global offsets of both layouts.
#pragma once

#include <cstdint>

#include "../mixer_block_params.h"
#include "common.cuh"

namespace convmixer_kernels {
namespace cuda {

enum class Mode {
  kApply,     // y = x + (act(conv(x) + b) - mean) * gamma * rstd + beta
  kStats,     // per-channel Welford partials of act(conv(x) + b)
  kGradSums,  // per-channel partials of sum(dy) and sum(dy * xhat)
  kGradH,     // dh = da * act'(h) to a buffer; partials of dweight, dbias (and the sums
              // of kGradSums when BN is frozen)
  kGradX,     // dx = dy + conv_transpose(dh)
};

// Passes that stage grad_out's tile beside the input tile (and write their result over it).
__host__ __device__ constexpr bool stages_grad_out(Mode m) { return m == Mode::kGradSums || m == Mode::kGradH || m == Mode::kGradX; }

// CB channels x (16 * STRIPS) rows x (8 * NB) cols per tile; 8 warps, TPW tasks each
// (a task = one channel x 16 rows), CPW channels per warp.
template <int CB_, int STRIPS_, int NB_>
struct TileCfg {
  static constexpr int CB = CB_, STRIPS = STRIPS_, NB = NB_;
  static constexpr int TH = 16 * STRIPS, TW = 8 * NB;
  static constexpr int TPW = CB * STRIPS / kWarps;
  static constexpr int CPW = TPW / STRIPS;
  static constexpr int NOUT = 4 * NB;       // outputs per lane per task
  static constexpr int OUT_PITCH = TW + 8;  // staged output rows; 16-byte aligned, and the
                                            // fragment stores of 8 rows hit distinct banks
  static constexpr int DH_PITCH = TW + 4;   // float dh rows (kGradH), 16-byte aligned
  static_assert(CB * STRIPS % kWarps == 0 && TPW % STRIPS == 0, "tasks must split evenly over warps");
  static_assert(NB % 2 == 0, "pairs of outputs are stored together; ldmatrix loads two halves");
};
using CfgWide = TileCfg<8, 2, 4>;     // 32 x 32 tiles of 8 channels: images wider than 16
using CfgNarrow = TileCfg<16, 1, 2>;  // 16 x 16 tiles of 16 channels: images up to 16 wide
using CfgGeneric = TileCfg<8, 1, 2>;  // any k: small tiles keep the k = 31 halo in 163 KB

// Shared-memory columns before output column 0 of a templated-k input tile. The
// tensor-core path puts 4 there for every k <= 9 (its band shifts by 4 - pad: build_band),
// so each n-tile's 16-column window starts 8 bytes past a 16-byte global vector and NCHW
// rows land as whole, aligned 8-byte cp.async copies, with no shift in registers. The
// CUDA-core path's windows start at pad.
template <typename T>
__host__ __device__ constexpr int templated_co(int k) {
  return Dtype<T>::kMma ? 4 : (k - 1) / 2;
}

// How far an n-tile's 16-column window starts before its first output's kernel window:
// templated_co<T>(K) - pad columns (the tile's columns start co before output 0).
template <typename T, int K>
__host__ __device__ constexpr int band_shift() {
  return templated_co<T>(K) - (K - 1) / 2;
}

// Elements per cp.async of an NCHW row staged from co columns before a vector boundary:
// the largest power of two up to a 16-byte vector that divides co, so that every copy is
// aligned in global and shared memory alike (at least 4 bytes: co is even for 16-bit types).
template <typename T>
__host__ __device__ constexpr int copy_elems(int co) {
  int g = vec_elems<T>();
  while (co % g != 0) g /= 2;
  return g;
}

// Everything a tile kernel reads; built on the host by launch.cuh.
struct TileArgs {
  int N, C, H, W;
  int k, pad;         // kernel size, and the zero rows/cols before the input of this conv
  int rows, pitch;    // input planes in shared memory (generic path; templated k: fixed)
  int co;             // shared-memory columns before output column 0 (generic path)
  int nhwc;           // the layout of every activation-sized tensor
  int vec;            // 16-byte global accesses are aligned (else element by element)
  int stages;         // shared buffers of the pipeline (launch.cuh's pipeline_stages): 2, the
                      // next item's copies in flight during this one's compute, or 1
  int tiles_h, tiles_w, items, items_per_block;
  const void* in;     // conv input: x, or dh for kGradX
  const void* aux;    // grad_out
  void* out;          // y, dh or dx
  const void* weight;
  int flip;           // conv_transpose: the kernel rotated by 180 degrees
  const void* bias;
  const float* gamma;
  const float* beta;
  const float* mean;
  const float* var;
  const float* dbeta;   // kGradH with batch statistics: the finished sums
  const float* dgamma;
  float eps, inv_count;
  int batch_stats;
  Activation act;
  float* partial;       // [slices][q_count][C]
  int q_count;
};

// Where element e of a lane's accumulators sits in its task's 16 x TW outputs. Elements
// 2m and 2m + 1 are horizontal neighbours at an even column in both layouts.
template <bool MMA, int NB>
struct Frag;
template <int NB>
struct Frag<true, NB> {  // the m16n8 accumulator layout, n-tile e / 4
  static __device__ __forceinline__ int row(int e, int lane) { return (lane >> 2) + ((e & 2) << 2); }
  static __device__ __forceinline__ int col(int e, int lane) { return ((e >> 2) << 3) + ((lane & 3) << 1) + (e & 1); }
};
template <int NB>
struct Frag<false, NB> {  // 4 rows x NB columns per lane
  static __device__ __forceinline__ int row(int e, int lane) { return ((lane >> 3) << 2) + e / NB; }
  static __device__ __forceinline__ int col(int e, int lane) { return (lane & 7) * NB + e % NB; }
};

__device__ __forceinline__ int64_t offset_nchw(const TileArgs& a, int n, int c, int h, int w) {
  return ((static_cast<int64_t>(n) * a.C + c) * a.H + h) * a.W + w;
}
__device__ __forceinline__ int64_t offset_nhwc(const TileArgs& a, int n, int c, int h, int w) {
  return ((static_cast<int64_t>(n) * a.H + h) * a.W + w) * a.C + c;
}
__device__ __forceinline__ int64_t offset(const TileArgs& a, int n, int c, int h, int w) {
  return a.nhwc ? offset_nhwc(a, n, c, h, w) : offset_nchw(a, n, c, h, w);
}

}  // namespace cuda
}  // namespace convmixer_kernels
