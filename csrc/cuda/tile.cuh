// The tile engine every pass of the mixer block runs on.
//
// A block owns CB channels (blockIdx.x) and a slice of the (image, tile row, tile col)
// items (blockIdx.y), and walks its items in order. Per item:
//   1. stage: the input tile plus its halo, CB planes of (TH + k - 1) x pitch elements,
//      zero-padded, goes to shared memory once with 16-byte global loads (both layouts:
//      NCHW rows are funnel-shifted into place, channels_last pixels are scattered into
//      per-channel planes); passes that read grad_out stage its TH x TW tile likewise.
//   2. conv: each warp computes 16 x TW outputs of one channel ("a task") in registers.
//      16-bit types with k in {3, 5, 7, 9} use tensor cores: along a row the depthwise
//      conv is a product with a banded (Toeplitz) matrix, so 8 outputs x 16 inputs is one
//      m16n8k16 MMA per kernel row, A read from the tile by ldmatrix, B built once per
//      block from the weights, accumulation in float. Everything else runs on CUDA cores
//      with 4 x NB outputs per lane and the kernel rows unrolled for k in {3, 5, 7, 9}.
//   3. epilogue: the pass's per-element math on the accumulators; outputs are staged in
//      shared memory and written with 16-byte stores; reductions accumulate per lane.
// At the end each block writes its per-channel partials to a workspace; a second kernel
// (reduce.cu) merges them in slice order. No atomics: same bits on every run.
//
// The banded MMA multiplies the zeros of the band by the inputs beside the window, so an
// inf there would turn into NaN where eager gives a finite value. A task whose
// accumulators are not all finite is recomputed exactly on CUDA cores (rare; then NaN and
// inf land exactly where eager puts them).
#pragma once

#include <cstdint>
#include <utility>

#include "../mixer_block_params.h"
#include "activations.cuh"
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

// Everything a tile kernel reads; built on the host by launch.cuh.
struct TileArgs {
  int N, C, H, W;
  int k, pad;         // kernel size, and the zero rows/cols before the input of this conv
  int rows, pitch;    // input planes in shared memory (generic path; templated k: fixed)
  int co;             // shared-memory columns before output column 0 (generic path)
  int nhwc;           // the layout of every activation-sized tensor
  int vec;            // 16-byte global accesses are aligned (else element by element)
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

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// Loads of up to kBatch units are issued before their stores, so each thread keeps
// several 16-byte loads in flight.
constexpr int kBatch = 4;

// Input planes: s_in[cl][r][s] = in[n, c0 + cl, h0 - pad + r, w0 - co + s], zero outside
// the image and for channels >= C. SHIFT = (-co) mod kVec: NCHW rows start kVec-aligned in
// global memory, so each 16-byte shared vector is the funnel shift of two global ones.
template <typename T, class Cfg, int SHIFT>
__device__ __forceinline__ void stage_input(const TileArgs& a, typename Dtype<T>::Bits* s_in, int rows,
                                            int pitch, int co, int pad, int n, int h0, int w0, int c0) {
  using Bits = typename Dtype<T>::Bits;
  constexpr int V = vec_elems<T>();
  constexpr int CB = Cfg::CB;
  const Bits* in = static_cast<const Bits*>(a.in);
  const int plane = rows * pitch;
  if (!a.nhwc && a.vec) {
    const int pv = pitch / V;
    const int units = CB * rows * pv;
    for (int u0 = threadIdx.x; u0 < units; u0 += kBatch * kThreads) {
      uint4 lo[kBatch], hi[kBatch];
      int dst[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int u = u0 + b * kThreads;
        lo[b] = hi[b] = make_uint4(0, 0, 0, 0);
        dst[b] = -1;
        if (u < units) {
          const int cl = u / (rows * pv);
          const int rem = u - cl * rows * pv;
          const int r = rem / pv;
          const int v = rem - r * pv;
          dst[b] = cl * plane + r * pitch + v * V;
          const int c = c0 + cl, gh = h0 - pad + r;
          const int gc = w0 - co + v * V - SHIFT;  // kVec-aligned
          if (c < a.C && gh >= 0 && gh < a.H) {
            const Bits* row = in + offset_nchw(a, n, c, gh, 0);
            if (gc >= 0 && gc + V <= a.W) lo[b] = ldg16(row + gc);
            if (SHIFT != 0 && gc + V >= 0 && gc + 2 * V <= a.W) hi[b] = ldg16(row + gc + V);
          }
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
        if (dst[b] >= 0) *reinterpret_cast<uint4*>(s_in + dst[b]) = funnel_vec<Bits, SHIFT>(lo[b], hi[b]);
    }
  } else if (!a.nhwc) {
    const int units = CB * plane;
    for (int u0 = threadIdx.x; u0 < units; u0 += kBatch * kThreads) {
      Bits val[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int u = u0 + b * kThreads;
        val[b] = 0;
        if (u < units) {
          const int cl = u / plane;
          const int rem = u - cl * plane;
          const int r = rem / pitch;
          const int s = rem - r * pitch;
          const int c = c0 + cl, gh = h0 - pad + r, gw = w0 - co + s;
          if (c < a.C && gh >= 0 && gh < a.H && gw >= 0 && gw < a.W) val[b] = in[offset_nchw(a, n, c, gh, gw)];
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int u = u0 + b * kThreads;
        if (u < units) s_in[u] = val[b];
      }
    }
  } else if (a.vec) {
    constexpr int NV = CB / V;  // 16-byte vectors per pixel
    static_assert(CB % V == 0, "a pixel's CB channels are whole vectors");
    const int units = rows * pitch * NV;
    for (int u0 = threadIdx.x; u0 < units; u0 += kBatch * kThreads) {
      uint4 val[kBatch];
      int dst[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int u = u0 + b * kThreads;
        val[b] = make_uint4(0, 0, 0, 0);
        dst[b] = -1;
        if (u < units) {
          const int v = u % NV, pix = u / NV;
          const int r = pix / pitch, s = pix - r * pitch;
          dst[b] = v * V * plane + pix;
          const int c = c0 + v * V, gh = h0 - pad + r, gw = w0 - co + s;
          if (c < a.C && gh >= 0 && gh < a.H && gw >= 0 && gw < a.W) val[b] = ldg16(in + offset_nhwc(a, n, c, gh, gw));
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (dst[b] < 0) continue;
        const uint32_t w[4] = {val[b].x, val[b].y, val[b].z, val[b].w};
#pragma unroll
        for (int e = 0; e < V; ++e)
          s_in[dst[b] + e * plane] = word_elem<Bits>(w[e * static_cast<int>(sizeof(Bits)) / 4], e % (4 / static_cast<int>(sizeof(Bits))));
      }
    }
  } else {
    const int units = rows * pitch * CB;
    for (int u0 = threadIdx.x; u0 < units; u0 += kBatch * kThreads) {
      Bits val[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int u = u0 + b * kThreads;
        val[b] = 0;
        if (u < units) {
          const int cl = u % CB, pix = u / CB;
          const int r = pix / pitch, s = pix - r * pitch;
          const int c = c0 + cl, gh = h0 - pad + r, gw = w0 - co + s;
          if (c < a.C && gh >= 0 && gh < a.H && gw >= 0 && gw < a.W) val[b] = in[offset_nhwc(a, n, c, gh, gw)];
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int u = u0 + b * kThreads;
        if (u < units) s_in[(u % CB) * plane + u / CB] = val[b];
      }
    }
  }
}

// Output-sized tiles between global memory and the shared planes s_out[cl][r][c]
// (pitch OUT_PITCH): TO_SMEM stages grad_out (zero outside the image), otherwise the
// staged result is written out where it lies inside the image.
template <typename T, class Cfg, bool TO_SMEM>
__device__ __forceinline__ void move_tile(const TileArgs& a, typename Dtype<T>::Bits* s_out, const void* gptr, int n,
                                          int h0, int w0, int c0) {
  using Bits = typename Dtype<T>::Bits;
  constexpr int V = vec_elems<T>();
  constexpr int CB = Cfg::CB, TH = Cfg::TH, TW = Cfg::TW, OP = Cfg::OUT_PITCH;
  constexpr int kPlane = TH * OP;
  const Bits* src = static_cast<const Bits*>(gptr);
  Bits* dstg = static_cast<Bits*>(const_cast<void*>(gptr));
  if (!a.nhwc && a.vec) {
    constexpr int units = CB * TH * (TW / V);
    for (int u0 = threadIdx.x; u0 < units; u0 += kBatch * kThreads) {
      uint4 val[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int u = u0 + b * kThreads;
        if (u >= units) continue;
        const int v = u % (TW / V), rc = u / (TW / V);
        const int r = rc % TH, cl = rc / TH;
        const int c = c0 + cl, gh = h0 + r, gw = w0 + v * V;
        Bits* sp = s_out + cl * kPlane + r * OP + v * V;
        const bool inside = c < a.C && gh < a.H && gw < a.W;  // W % V == 0: whole vectors
        if constexpr (TO_SMEM) {
          val[b] = inside ? ldg16(src + offset_nchw(a, n, c, gh, gw)) : make_uint4(0, 0, 0, 0);
        } else if (inside) {
          *reinterpret_cast<uint4*>(dstg + offset_nchw(a, n, c, gh, gw)) = *reinterpret_cast<const uint4*>(sp);
        }
      }
      if constexpr (TO_SMEM) {
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int u = u0 + b * kThreads;
          if (u >= units) continue;
          const int v = u % (TW / V), rc = u / (TW / V);
          *reinterpret_cast<uint4*>(s_out + (rc / TH) * kPlane + (rc % TH) * OP + v * V) = val[b];
        }
      }
    }
  } else if (!a.nhwc) {
    constexpr int units = CB * TH * TW;
    for (int u = threadIdx.x; u < units; u += kThreads) {
      const int s = u % TW, rc = u / TW;
      const int r = rc % TH, cl = rc / TH;
      const int c = c0 + cl, gh = h0 + r, gw = w0 + s;
      const bool inside = c < a.C && gh < a.H && gw < a.W;
      Bits* sp = s_out + cl * kPlane + r * OP + s;
      if constexpr (TO_SMEM) {
        *sp = inside ? src[offset_nchw(a, n, c, gh, gw)] : Bits(0);
      } else if (inside) {
        dstg[offset_nchw(a, n, c, gh, gw)] = *sp;
      }
    }
  } else if (a.vec) {
    constexpr int NV = CB / V;
    constexpr int units = TH * TW * NV;
    constexpr int kPerWord = 4 / static_cast<int>(sizeof(Bits));
    for (int u0 = threadIdx.x; u0 < units; u0 += kBatch * kThreads) {
      uint4 val[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int u = u0 + b * kThreads;
        if (u >= units) continue;
        const int v = u % NV, pix = u / NV;
        const int r = pix / TW, s = pix % TW;
        const int c = c0 + v * V, gh = h0 + r, gw = w0 + s;
        const bool inside = c < a.C && gh < a.H && gw < a.W;  // C % V == 0: whole vectors
        if constexpr (TO_SMEM) {
          val[b] = inside ? ldg16(src + offset_nhwc(a, n, c, gh, gw)) : make_uint4(0, 0, 0, 0);
        } else if (inside) {
          uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
          for (int e = 0; e < V; ++e)
            w[e / kPerWord] |= static_cast<uint32_t>(s_out[(v * V + e) * kPlane + r * OP + s])
                               << (16 * (e % kPerWord));
          *reinterpret_cast<uint4*>(dstg + offset_nhwc(a, n, c, gh, gw)) = make_uint4(w[0], w[1], w[2], w[3]);
        }
      }
      if constexpr (TO_SMEM) {
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int u = u0 + b * kThreads;
          if (u >= units) continue;
          const int v = u % NV, pix = u / NV;
          const int r = pix / TW, s = pix % TW;
          const uint32_t w[4] = {val[b].x, val[b].y, val[b].z, val[b].w};
#pragma unroll
          for (int e = 0; e < V; ++e)
            s_out[(v * V + e) * kPlane + r * OP + s] = word_elem<Bits>(w[e / kPerWord], e % kPerWord);
        }
      }
    }
  } else {
    constexpr int units = TH * TW * CB;
    for (int u = threadIdx.x; u < units; u += kThreads) {
      const int cl = u % CB, pix = u / CB;
      const int r = pix / TW, s = pix % TW;
      const int c = c0 + cl, gh = h0 + r, gw = w0 + s;
      const bool inside = c < a.C && gh < a.H && gw < a.W;
      Bits* sp = s_out + cl * kPlane + r * OP + s;
      if constexpr (TO_SMEM) {
        *sp = inside ? src[offset_nhwc(a, n, c, gh, gw)] : Bits(0);
      } else if (inside) {
        dstg[offset_nhwc(a, n, c, gh, gw)] = *sp;
      }
    }
  }
}

// B fragments of the banded matrices, one per kernel row i: B_i[kk][nn] = w[i][kk - nn]
// (zero off the band), so that column nn of A_i * B_i is the row-i contribution to output
// nn of an n-tile whose 16 inputs start at its first output's window. Lane (g, t) holds
// rows 2t, 2t+1 (reg 0) and 2t+8, 2t+9 (reg 1) of column g.
template <typename T, int K>
__device__ __forceinline__ void build_band(const TileArgs& a, int c, int lane, uint32_t (&bf)[K][2]) {
  const uint16_t* w = static_cast<const uint16_t*>(a.weight);
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < K; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t word = 0;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = 2 * t + 8 * h + e - g;
        if (c < a.C && j >= 0 && j < K) {
          const int tap = a.flip ? (K - 1 - i) * K + (K - 1 - j) : i * K + j;
          word |= static_cast<uint32_t>(__ldg(w + static_cast<int64_t>(c) * K * K + tap)) << (16 * e);
        }
      }
      bf[i][h] = word;
    }
  }
}

// Tensor-core conv of one task: 16 rows from `strip`, NB n-tiles of 8 columns. For kernel
// row i the A tiles of the n-tiles are the 8-column halves (b, b + 1) of the same input
// rows, so NB + 1 halves per row are loaded once and shared by neighbouring n-tiles.
template <typename T, int K, int NB>
__device__ __forceinline__ void conv_mma(const uint16_t* plane, int strip, const uint32_t (&bf)[K][2],
                                         float (&acc)[4 * NB], int lane) {
  constexpr int kPitch = 8 * NB + 8;
#pragma unroll
  for (int e = 0; e < 4 * NB; ++e) acc[e] = 0.0f;
  // ldmatrix: lanes 0-15 address rows 0-15 of the first 8 columns, lanes 16-31 rows 0-15
  // of the next 8 (x2 uses only lanes 0-15).
  const uint32_t base = smem_addr(plane + (strip * 16 + (lane & 15)) * kPitch + (lane >> 4) * 8);
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const uint32_t row = base + i * kPitch * 2;
    uint32_t half[NB + 1][2];
#pragma unroll
    for (int h = 0; h < NB; h += 2) {
      uint32_t r[4];
      ldmatrix_x4(r, row + h * 16);
      half[h][0] = r[0];
      half[h][1] = r[1];
      half[h + 1][0] = r[2];
      half[h + 1][1] = r[3];
    }
    {
      uint32_t r[2];
      ldmatrix_x2(r, row + NB * 16 - (lane >> 4) * 16);
      half[NB][0] = r[0];
      half[NB][1] = r[1];
    }
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      const uint32_t af[4] = {half[b][0], half[b][1], half[b + 1][0], half[b + 1][1]};
      mma_16816<T>(acc + 4 * b, af, bf[i]);
    }
  }
}

// Exact recomputation of a tensor-core task on CUDA cores, in the fragment layout (see
// the top of this file: only when an accumulator came out non-finite).
template <typename T, int K, int NB>
__device__ __forceinline__ void conv_exact(const TileArgs& a, const uint16_t* plane, int c, int strip,
                                        float (&acc)[4 * NB], int lane) {
  constexpr int kPitch = 8 * NB + 8;
  const uint16_t* w = static_cast<const uint16_t*>(a.weight) + static_cast<int64_t>(c) * K * K;
#pragma unroll
  for (int e = 0; e < 4 * NB; ++e) {
    const int r0 = strip * 16 + Frag<true, NB>::row(e, lane), c0 = Frag<true, NB>::col(e, lane);
    float s = 0.0f;
    // rolled loops: this path must not claim registers from the tensor-core one
#pragma unroll 1
    for (int i = 0; i < K; ++i)
#pragma unroll 1
      for (int j = 0; j < K; ++j) {
        const int tap = a.flip ? (K - 1 - i) * K + (K - 1 - j) : i * K + j;
        s = fmaf(Dtype<T>::to_float(__ldg(w + tap)), Dtype<T>::to_float(plane[(r0 + i) * kPitch + c0 + j]), s);
      }
    acc[e] = c < a.C ? s : 0.0f;
  }
}

// Filter rows of the templated CUDA-core path are padded to whole float4s.
template <int K>
__host__ __device__ constexpr int filter_pitch() {
  return (K + 3) / 4 * 4;
}

// CUDA-core conv of one task with k known at compile time: each input row of the lane's
// window is read once (vector loads) and feeds up to 4 output rows. Filter row r is
// loaded at step r, so only the 4 rows in use occupy registers.
template <int K, int NB>
__device__ __forceinline__ void conv_simt(const float* plane, const float* w, int strip, float (&acc)[4 * NB],
                                          int lane) {
  constexpr int kPitch = 8 * NB + 8;
  constexpr int NV = (NB + K - 1 + NB - 1) / NB * NB;
  constexpr int KP = filter_pitch<K>();
#pragma unroll
  for (int e = 0; e < 4 * NB; ++e) acc[e] = 0.0f;
  const float* src = plane + (strip * 16 + ((lane >> 3) << 2)) * kPitch + (lane & 7) * NB;
  float wr[K][KP];
#pragma unroll
  for (int r = 0; r < K + 3; ++r) {
    if (r < K) {
#pragma unroll
      for (int j = 0; j < KP; j += 4) {
        const float4 q = lds_pinned_f32x4(w + r * KP + j);
        wr[r][j] = q.x, wr[r][j + 1] = q.y, wr[r][j + 2] = q.z, wr[r][j + 3] = q.w;
      }
    }
    float v[NV];
    load_row<float, NB, NV>(reinterpret_cast<const uint32_t*>(src + r * kPitch), v);
#pragma unroll
    for (int y = 0; y < 4; ++y) {
      const int i = r - y;
      if (i < 0 || i >= K) continue;
#pragma unroll
      for (int j = 0; j < K; ++j)
#pragma unroll
        for (int x = 0; x < NB; ++x) acc[y * NB + x] = fmaf(wr[i][j], v[x + j], acc[y * NB + x]);
    }
  }
}

// CUDA-core conv of one task for any k: `coff` = co - pad shifts the columns of the
// (vector-aligned) generic tile.
template <typename T, int NB>
__device__ __forceinline__ void conv_generic(const typename Dtype<T>::Bits* plane, const float* w, int k, int pitch,
                                             int coff, int strip, float (&acc)[4 * NB], int lane) {
#pragma unroll
  for (int e = 0; e < 4 * NB; ++e) acc[e] = 0.0f;
  const typename Dtype<T>::Bits* src = plane + (strip * 16 + ((lane >> 3) << 2)) * pitch + (lane & 7) * NB + coff;
  for (int r = 0; r < k + 3; ++r) {
    for (int j = 0; j < k; ++j) {
      float v[NB];
#pragma unroll
      for (int x = 0; x < NB; ++x) v[x] = Dtype<T>::to_float(src[r * pitch + x + j]);
#pragma unroll
      for (int y = 0; y < 4; ++y) {
        const int i = r - y;
        if (i < 0 || i >= k) continue;
        const float wv = w[i * k + j];
#pragma unroll
        for (int x = 0; x < NB; ++x) acc[y * NB + x] = fmaf(wv, v[x], acc[y * NB + x]);
      }
    }
  }
}

// Kernel rows per group of the dweight reduction: a group's TI * K taps fit the 32 slots
// of one warp reduce-scatter.
template <int K>
struct DwGroups {
  static constexpr int TI = 32 / K < K ? 32 / K : K;
  static constexpr int G = (K + TI - 1) / TI;
};

// dweight[i][j] += sum over the task's outputs of dh * x[row + i][col + j], for k known
// at compile time: each lane correlates its 4 x NB dh values with its input window
// (every x row read once per group), then one reduce-scatter per group leaves tap
// (group * TI * K + lane) in lane `lane`. The group is a template constant so that all
// indices into the 32 partial sums are constants (registers, not local memory).
template <typename T, int K, int NB, int GI>
__device__ __forceinline__ void dweight_group(const typename Dtype<T>::Bits* src, const float (&dv)[4][NB],
                                              float& dw, int lane) {
  constexpr int kPitch = 8 * NB + 8;
  constexpr int NV = (NB + K - 1 + NB - 1) / NB * NB;
  constexpr int TI = DwGroups<K>::TI;
  constexpr int I0 = GI * TI;
  constexpr int I1 = I0 + TI < K ? I0 + TI : K;
  float part[32];
#pragma unroll
  for (int s = 0; s < 32; ++s) part[s] = 0.0f;
#pragma unroll
  for (int rr = I0; rr < I1 + 3; ++rr) {
    float v[NV];
    load_row<T, NB, NV>(src + rr * kPitch, v);
#pragma unroll
    for (int y = 0; y < 4; ++y) {
      const int i = rr - y;
      if (i < I0 || i >= I1) continue;
#pragma unroll
      for (int j = 0; j < K; ++j)
#pragma unroll
        for (int x = 0; x < NB; ++x) part[(i - I0) * K + j] = fmaf(dv[y][x], v[x + j], part[(i - I0) * K + j]);
    }
  }
  dw += warp_reduce_scatter32(part, lane);
}

template <typename T, int K, int NB, int... GI>
__device__ __forceinline__ void dweight_groups(const typename Dtype<T>::Bits* src, const float (&dv)[4][NB],
                                               float (&dw)[DwGroups<K>::G], int lane,
                                               std::integer_sequence<int, GI...>) {
  (dweight_group<T, K, NB, GI>(src, dv, dw[GI], lane), ...);
}

template <typename T, int K, int NB>
__device__ __forceinline__ void dweight_task(const typename Dtype<T>::Bits* plane, const float* dh, int strip,
                                             float (&dw)[DwGroups<K>::G], int lane) {
  constexpr int kPitch = 8 * NB + 8, kDhPitch = 8 * NB + 4;
  const int rg = lane >> 3, cg = lane & 7;
  float dv[4][NB];
#pragma unroll
  for (int y = 0; y < 4; ++y)
    load_row<float, NB, NB>(reinterpret_cast<const uint32_t*>(dh + (4 * rg + y) * kDhPitch + cg * NB), dv[y]);
  dweight_groups<T, K, NB>(plane + (strip * 16 + 4 * rg) * kPitch + cg * NB, dv, dw, lane,
                           std::make_integer_sequence<int, DwGroups<K>::G>{});
}

// The same for any k: lane l owns taps l, l + 32, ... and adds its sums to the block's
// partial in global memory (only that lane ever touches those addresses).
template <typename T, int TW>
__device__ __forceinline__ void dweight_task_generic(const typename Dtype<T>::Bits* plane, const float* dh, int k,
                                                     int pitch, int coff, int strip, float* part, int C, int lane) {
  constexpr int kDhPitch = TW + 4;
  for (int t = lane; t < k * k; t += 32) {
    const int i = t / k, j = t - i * k;
    float s = 0.0f;
    for (int r = 0; r < 16; ++r) {
      const typename Dtype<T>::Bits* xr = plane + (strip * 16 + r + i) * pitch + j + coff;
#pragma unroll
      for (int col = 0; col < TW; ++col) s = fmaf(dh[r * kDhPitch + col], Dtype<T>::to_float(xr[col]), s);
    }
    part[static_cast<int64_t>(t) * C] += s;
  }
}

// Per-channel constants of a lane's channel.
struct ChannelConsts {
  float bias = 0.0f, mean = 0.0f, rstd = 0.0f, scale = 0.0f, shift = 0.0f, k1 = 0.0f, k2 = 0.0f;
};

template <typename T, Mode MODE>
__device__ __forceinline__ ChannelConsts channel_consts(const TileArgs& a, int c) {
  ChannelConsts cc;
  if (c >= a.C || MODE == Mode::kGradX) return cc;
  if (a.bias) cc.bias = Dtype<T>::to_float(static_cast<const typename Dtype<T>::Bits*>(a.bias)[c]);
  if (MODE == Mode::kStats) return cc;
  cc.mean = a.mean[c];
  cc.rstd = 1.0f / sqrtf(a.var[c] + a.eps);
  cc.scale = (a.gamma ? a.gamma[c] : 1.0f) * cc.rstd;
  if (MODE == Mode::kApply) cc.shift = a.beta ? a.beta[c] : 0.0f;
  if (MODE == Mode::kGradH && a.batch_stats) {
    cc.k1 = a.dbeta[c] * a.inv_count;
    cc.k2 = a.dgamma[c] * a.inv_count;
  }
  return cc;
}

// The dynamic shared memory of one kernel, in this order (every part 16-byte aligned):
//   in    CB input planes, rows x pitch elements
//   out   CB planes of TH x OUT_PITCH elements: grad_out in, the result out (not kStats)
//   dh    CB planes of TH x DH_PITCH floats (kGradH)
//   w     float filters of the CUDA-core paths: rows of filter_pitch<K>(), or k*k (generic)
//   band  the B fragments, [CB][K][32 lanes][2], where registers are short: two channels
//         per warp, or kGradH whose dweight phase needs them
// The host sizes the launch with the same function.
template <typename T, int K, class Cfg, Mode MODE>
struct SmemLayout {
  static constexpr bool kMma = Dtype<T>::kMma && K > 0;
  static constexpr bool kBandInSmem = kMma && (Cfg::CPW > 1 || MODE == Mode::kGradH);
  size_t out, dh, w, band, total;
  __host__ __device__ SmemLayout(int rows, int pitch, int k) {
    const size_t bits = sizeof(typename Dtype<T>::Bits);
    out = static_cast<size_t>(Cfg::CB) * rows * pitch * bits;
    dh = out + (MODE != Mode::kStats ? static_cast<size_t>(Cfg::CB) * Cfg::TH * Cfg::OUT_PITCH * bits : 0);
    w = dh + (MODE == Mode::kGradH ? static_cast<size_t>(Cfg::CB) * Cfg::TH * Cfg::DH_PITCH * sizeof(float) : 0);
    const size_t filters = kMma ? 0 : K > 0 ? static_cast<size_t>(K) * filter_pitch<K>() : static_cast<size_t>(k) * k;
    band = w + (Cfg::CB * filters * sizeof(float) + 15) / 16 * 16;
    total = band + (kBandInSmem ? static_cast<size_t>(Cfg::CB) * K * 32 * 2 * sizeof(uint32_t) : 0);
  }
};

template <typename T, int K, class Cfg, Mode MODE>
__global__ void __launch_bounds__(kThreads, 2) tile_kernel(const TileArgs a) {
  using D = Dtype<T>;
  using Bits = typename D::Bits;
  constexpr bool kGeneric = K == 0;
  constexpr bool kMma = D::kMma && !kGeneric;
  constexpr int V = vec_elems<T>();
  constexpr int kShift = kGeneric ? 0 : (V - ((K - 1) / 2) % V) % V;
  constexpr int CB = Cfg::CB, TH = Cfg::TH, TW = Cfg::TW, NB = Cfg::NB, STRIPS = Cfg::STRIPS;
  constexpr int CPW = Cfg::CPW, TPW = Cfg::TPW, NOUT = Cfg::NOUT, OP = Cfg::OUT_PITCH, DHP = Cfg::DH_PITCH;
  constexpr bool kStagesAux = MODE == Mode::kGradSums || MODE == Mode::kGradH || MODE == Mode::kGradX;
  constexpr bool kWritesOut = MODE == Mode::kApply || MODE == Mode::kGradH || MODE == Mode::kGradX;
  constexpr int KB = kMma ? K : 1;                 // band fragments per channel
  constexpr int DWG = kGeneric ? 1 : DwGroups<kGeneric ? 1 : K>::G;
  using F = Frag<kMma, NB>;

  const int k = kGeneric ? a.k : K;
  const int pad = kGeneric ? a.pad : (K - 1) / 2;
  const int rows = kGeneric ? a.rows : TH + K - 1;
  const int pitch = kGeneric ? a.pitch : TW + 8;
  const int co = kGeneric ? a.co : (K - 1) / 2;
  const int plane_in = rows * pitch;

  extern __shared__ __align__(16) unsigned char smem[];
  using Smem = SmemLayout<T, K, Cfg, MODE>;
  const Smem layout(rows, pitch, k);
  Bits* s_in = reinterpret_cast<Bits*>(smem);
  Bits* s_out = reinterpret_cast<Bits*>(smem + layout.out);
  float* s_dh = reinterpret_cast<float*>(smem + layout.dh);
  float* s_w = reinterpret_cast<float*>(smem + layout.w);
  uint32_t* s_band = reinterpret_cast<uint32_t*>(smem + layout.band);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int c0 = blockIdx.x * CB;
  const int slice = blockIdx.y;
  const int item_begin = slice * a.items_per_block;
  const int item_end = min(a.items, item_begin + a.items_per_block);

  // Block setup; shared memory written here is read after the first barrier below.
  if constexpr (!kMma) {
    // float copies of the block's filters (rotated for the transposed conv); the
    // templated path pads each filter row to filter_pitch<K>()
    const Bits* w = static_cast<const Bits*>(a.weight);
    const int kk = k * k;
    const int row_pitch = kGeneric ? k : filter_pitch<kGeneric ? 1 : K>();
    for (int u = threadIdx.x; u < CB * k * row_pitch; u += kThreads) {
      const int cl = u / (k * row_pitch), rem = u - cl * k * row_pitch;
      const int i = rem / row_pitch, j = rem - i * row_pitch;
      const int c = c0 + cl, t = i * k + j;
      s_w[u] = c < a.C && j < k ? D::to_float(w[static_cast<int64_t>(c) * kk + (a.flip ? kk - 1 - t : t)]) : 0.0f;
    }
  }
  uint32_t band[Smem::kBandInSmem ? 1 : CPW][KB][2];
  ChannelConsts cc[CPW];
#pragma unroll
  for (int s = 0; s < CPW; ++s) {
    const int c = c0 + warp * CPW + s;
    if constexpr (Smem::kBandInSmem) {
      uint32_t bf[KB][2];
      build_band<T, K>(a, c, lane, bf);
      uint32_t* dst = s_band + ((warp * CPW + s) * KB * 32 + lane) * 2;
#pragma unroll
      for (int i = 0; i < KB; ++i) *reinterpret_cast<uint2*>(dst + i * 64) = make_uint2(bf[i][0], bf[i][1]);
    } else if constexpr (kMma) {
      build_band<T, K>(a, c, lane, band[s]);
    }
    cc[s] = channel_consts<T, MODE>(a, c);
  }

  // Per-lane running reductions, one per channel of the warp.
  Welford stats[CPW];
  float sum_dy[CPW], sum_dyx[CPW], sum_dh[CPW], dw[CPW][DWG];
#pragma unroll
  for (int s = 0; s < CPW; ++s) {
    sum_dy[s] = sum_dyx[s] = sum_dh[s] = 0.0f;
#pragma unroll
    for (int q = 0; q < DWG; ++q) dw[s][q] = 0.0f;
  }
  if constexpr (MODE == Mode::kGradH && kGeneric) {
#pragma unroll
    for (int s = 0; s < CPW; ++s) {
      const int c = c0 + warp * CPW + s;
      if (c >= a.C) continue;
      for (int t = lane; t < k * k; t += 32) a.partial[(static_cast<int64_t>(slice) * a.q_count + t) * a.C + c] = 0.0f;
    }
  }

  for (int item = item_begin; item < item_end; ++item) {
    const int tw = item % a.tiles_w;
    const int th = (item / a.tiles_w) % a.tiles_h;
    const int n = item / (a.tiles_w * a.tiles_h);
    const int h0 = th * TH, w0 = tw * TW;
    stage_input<T, Cfg, kShift>(a, s_in, rows, pitch, co, pad, n, h0, w0, c0);
    if constexpr (kStagesAux) move_tile<T, Cfg, true>(a, s_out, a.aux, n, h0, w0, c0);
    __syncthreads();

#pragma unroll
    for (int m = 0; m < TPW; ++m) {
      const int slot = m / STRIPS, strip = m % STRIPS;
      const int cl = warp * CPW + slot;
      const int c = c0 + cl;
      const Bits* plane = s_in + cl * plane_in;
      float acc[NOUT];
      if constexpr (Smem::kBandInSmem) {
        uint32_t bf[KB][2];
        const uint32_t* src = s_band + (cl * KB * 32 + lane) * 2;
#pragma unroll
        for (int i = 0; i < KB; ++i) {
          const uint2 q = lds_pinned_u32x2(src + i * 64);
          bf[i][0] = q.x, bf[i][1] = q.y;
        }
        conv_mma<T, K, NB>(plane, strip, bf, acc, lane);
      } else if constexpr (kMma) {
        conv_mma<T, K, NB>(plane, strip, band[slot], acc, lane);
      }
      if constexpr (kMma) {
        bool bad = false;
#pragma unroll
        for (int e = 0; e < NOUT; ++e) bad |= !is_finite(acc[e]);
        if (__any_sync(kFullMask, bad)) conv_exact<T, K, NB>(a, plane, c, strip, acc, lane);
      } else if constexpr (kGeneric) {
        conv_generic<T, NB>(plane, s_w + cl * k * k, k, pitch, co - pad, strip, acc, lane);
      } else {
        conv_simt<K, NB>(reinterpret_cast<const float*>(plane), s_w + cl * K * filter_pitch<kGeneric ? 1 : K>(),
                         strip, acc, lane);
      }

      // Which of the lane's outputs lie inside the image (reductions skip the rest).
      uint32_t inside = 0;
#pragma unroll
      for (int e = 0; e < NOUT; ++e)
        if (c < a.C && h0 + strip * 16 + F::row(e, lane) < a.H && w0 + F::col(e, lane) < a.W) inside |= 1u << e;
      const ChannelConsts& q = cc[slot];
      Bits* out_plane = s_out + cl * TH * OP;

      if constexpr (MODE == Mode::kApply) {
        with_activation(a.act, [&](auto act) {
          using Act = decltype(act);
#pragma unroll
          for (int e = 0; e < NOUT; e += 2) {
            const int tr = strip * 16 + F::row(e, lane), tc = F::col(e, lane);
            const Bits* xs = plane + (tr + pad) * pitch + tc + co;
            float y[2];
#pragma unroll
            for (int p = 0; p < 2; ++p)
              y[p] = D::to_float(xs[p]) + fmaf(Act::fwd(acc[e + p] + q.bias) - q.mean, q.scale, q.shift);
            store_pair<T>(out_plane + tr * OP + tc, y[0], y[1]);
          }
        });
      } else if constexpr (MODE == Mode::kStats) {
        with_activation(a.act, [&](auto act) {
          using Act = decltype(act);
          float cnt = 0.0f, sum = 0.0f;
#pragma unroll
          for (int e = 0; e < NOUT; ++e) {
            acc[e] = Act::fwd(acc[e] + q.bias);
            if (inside >> e & 1u) {
              cnt += 1.0f;
              sum += acc[e];
            }
          }
          if (cnt > 0.0f) {
            // two passes over registers: the tile's own mean, then M2 around it
            const float mean = sum / cnt;
            float m2 = 0.0f;
#pragma unroll
            for (int e = 0; e < NOUT; ++e) {
              const float d = acc[e] - mean;
              if (inside >> e & 1u) m2 = fmaf(d, d, m2);
            }
            stats[slot].merge(cnt, mean, m2);
          }
        });
      } else if constexpr (MODE == Mode::kGradSums) {
        with_activation(a.act, [&](auto act) {
          using Act = decltype(act);
          float sd = 0.0f, sdx = 0.0f;
#pragma unroll
          for (int e = 0; e < NOUT; e += 2) {
            const int tr = strip * 16 + F::row(e, lane), tc = F::col(e, lane);
            float dy[2];
            load_pair<T>(out_plane + tr * OP + tc, dy[0], dy[1]);
#pragma unroll
            for (int p = 0; p < 2; ++p) {
              const float xhat = (Act::fwd(acc[e + p] + q.bias) - q.mean) * q.rstd;
              if (inside >> (e + p) & 1u) {
                sd += dy[p];
                sdx = fmaf(dy[p], xhat, sdx);
              }
            }
          }
          sum_dy[slot] += sd;
          sum_dyx[slot] += sdx;
        });
      } else if constexpr (MODE == Mode::kGradH) {
        with_activation(a.act, [&](auto act) {
          using Act = decltype(act);
          float sd = 0.0f, sdx = 0.0f, sdh = 0.0f;
#pragma unroll
          for (int e = 0; e < NOUT; e += 2) {
            const int tr = strip * 16 + F::row(e, lane), tc = F::col(e, lane);
            float dy[2], dh[2];
            load_pair<T>(out_plane + tr * OP + tc, dy[0], dy[1]);
#pragma unroll
            for (int p = 0; p < 2; ++p) {
              float d;
              const float xhat = (Act::fwd_grad(acc[e + p] + q.bias, &d) - q.mean) * q.rstd;
              const float da = a.batch_stats ? q.scale * (dy[p] - q.k1 - xhat * q.k2) : q.scale * dy[p];
              const bool in_image = inside >> (e + p) & 1u;
              dh[p] = in_image ? da * d : 0.0f;
              sdh += dh[p];
              if (in_image) {
                sd += dy[p];
                sdx = fmaf(dy[p], xhat, sdx);
              }
            }
            store_pair<T>(out_plane + tr * OP + tc, dh[0], dh[1]);
            *reinterpret_cast<float2*>(s_dh + cl * TH * DHP + tr * DHP + tc) = make_float2(dh[0], dh[1]);
          }
          sum_dh[slot] += sdh;
          sum_dy[slot] += sd;
          sum_dyx[slot] += sdx;
        });
      } else {
        static_assert(MODE == Mode::kGradX, "unhandled mode");
#pragma unroll
        for (int e = 0; e < NOUT; e += 2) {
          const int tr = strip * 16 + F::row(e, lane), tc = F::col(e, lane);
          float dy[2];
          load_pair<T>(out_plane + tr * OP + tc, dy[0], dy[1]);
          store_pair<T>(out_plane + tr * OP + tc, dy[0] + acc[e], dy[1] + acc[e + 1]);
        }
      }
    }

    if constexpr (MODE == Mode::kGradH) {
      __syncwarp();  // the warp's own dh rows, written in the fragment layout above
#pragma unroll
      for (int m = 0; m < TPW; ++m) {
        const int slot = m / STRIPS, strip = m % STRIPS;
        const int cl = warp * CPW + slot;
        const Bits* plane = s_in + cl * plane_in;
        const float* dh = s_dh + cl * TH * DHP + strip * 16 * DHP;
        if constexpr (kGeneric) {
          if (c0 + cl < a.C)
            dweight_task_generic<T, TW>(plane, dh, k, pitch, co - pad, strip,
                                        a.partial + static_cast<int64_t>(slice) * a.q_count * a.C + c0 + cl, a.C,
                                        lane);
        } else {
          dweight_task<T, K, NB>(plane, dh, strip, dw[slot], lane);
        }
      }
    }
    if constexpr (kWritesOut) {
      __syncthreads();
      move_tile<T, Cfg, false>(a, s_out, a.out, n, h0, w0, c0);
    }
    __syncthreads();  // the next item's staging overwrites the tiles
  }

  // The block's partials: slice `slice`, rows q of [slices][q_count][C].
#pragma unroll
  for (int s = 0; s < CPW; ++s) {
    const int c = c0 + warp * CPW + s;
    float* part = a.partial + static_cast<int64_t>(slice) * a.q_count * a.C + c;
    if constexpr (MODE == Mode::kStats) {
      Welford w = stats[s];
#pragma unroll
      for (int step = 0; step < 5; ++step) {
        const int m = 16 >> step;
        const float nb = __shfl_xor_sync(kFullMask, w.n, m);
        const float mb = __shfl_xor_sync(kFullMask, w.mean, m);
        const float m2b = __shfl_xor_sync(kFullMask, w.m2, m);
        w.merge(nb, mb, m2b);
      }
      if (lane == 0 && c < a.C) {
        part[0] = w.n;
        part[a.C] = w.mean;
        part[2 * a.C] = w.m2;
      }
    } else if constexpr (MODE == Mode::kGradSums) {
      const float sd = warp_sum(sum_dy[s]), sdx = warp_sum(sum_dyx[s]);
      if (lane == 0 && c < a.C) {
        part[0] = sd;
        part[a.C] = sdx;
      }
    } else if constexpr (MODE == Mode::kGradH) {
      const int kk = k * k;
      const float sdh = warp_sum(sum_dh[s]);
      const float sd = warp_sum(sum_dy[s]), sdx = warp_sum(sum_dyx[s]);
      if (c < a.C) {
        if constexpr (!kGeneric) {
          constexpr int TI = DwGroups<kGeneric ? 1 : K>::TI;
#pragma unroll
          for (int gi = 0; gi < DWG; ++gi) {
            const int tap = gi * TI * K + lane;
            const int rows_in_group = (gi + 1) * TI < K ? TI : K - gi * TI;
            if (lane < rows_in_group * K) part[static_cast<int64_t>(tap) * a.C] = dw[s][gi];
          }
        }
        if (lane == 0) {
          part[static_cast<int64_t>(kk) * a.C] = sdh;
          if (!a.batch_stats) {
            part[static_cast<int64_t>(kk + 1) * a.C] = sd;
            part[static_cast<int64_t>(kk + 2) * a.C] = sdx;
          }
        }
      }
    }
  }
}

}  // namespace cuda
}  // namespace convmixer_kernels
