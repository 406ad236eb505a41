// The tile engine every pass of the mixer block runs on: the kernel (this file), its
// staging (tile_staging.cuh), convolutions (tile_conv.cuh), weight gradient
// (tile_dweight.cuh) and shared types (tile_types.cuh).
//
// A block owns CB channels (blockIdx.x) and a slice of the (image, tile row, tile col)
// items (blockIdx.y), and walks its items in order. Per item:
//   1. stage: the input tile plus its halo, CB planes of (TH + k - 1) x pitch elements,
//      zero-padded, and for the passes that read grad_out its TH x TW tile, go to shared
//      memory once (tile_staging.cuh: cp.async in NCHW, transposed 16-byte stores in
//      channels_last, element by element when unaligned).
//   2. conv: each warp computes 16 x TW outputs of one channel ("a task") in registers.
//      16-bit types with k in {3, 5, 7, 9} use tensor cores: along a row the depthwise
//      conv is a product with a banded (Toeplitz) matrix, so 8 outputs x 16 inputs is one
//      m16n8k16 MMA per kernel row, A read from the tile by ldmatrix, B built once per
//      block from the weights, accumulation in float. Everything else runs on CUDA cores
//      with 4 x NB outputs per lane and the kernel rows unrolled for k in {3, 5, 7, 9}.
//   3. epilogue: the pass's per-element math on the accumulators; outputs are staged in
//      shared memory and written with 16-byte stores; reductions accumulate per lane. The
//      dh pass's weight gradient correlates the task's dh with the input tile, on tensor
//      cores for the 16-bit types (tile_dweight.cuh).
// At the end each block writes its per-channel partials to a workspace; a second kernel
// (reduce.cu) merges them in slice order. No atomics: same bits on every run.
//
// The pipeline: with two shared buffers (a.stages = 2) the next item is staged while this
// one computes. NCHW alternates the two: item i + 1's cp.async copies go to one buffer
// before item i computes from the other, and item i waits only for its own group.
// channels_last keeps the planes in buffer 0 and lands the next item's raw pixels in
// buffer 1 by cp.async, transposing them into the planes once item i is done with them.
// With one buffer (launch.cuh chooses it where two would cost blocks per multiprocessor, or
// a block has one item) item i + 1 is staged after item i's last barrier, channels_last
// transposing from global memory as it stages. Per item, NCHW or one buffer: stage (the
// copies of item i + 1 with two buffers, of item i with one) -> wait (item i's) -> barrier
// -> compute -> barrier -> store -> barrier; with the landing buffer: stage (item i + 1's
// raw pixels) -> compute -> barrier -> store -> barrier -> wait -> barrier -> transpose
// (item i + 1) -> barrier. The passes that write no tile (stats, grad_sums) skip the store
// and the barrier before it.
//
// The banded MMA multiplies the zeros of the band by the inputs beside the window, so an
// inf there would turn into NaN where eager gives a finite value. A task whose
// accumulators are not all finite is recomputed exactly on CUDA cores (rare; then NaN and
// inf land exactly where eager puts them).
#pragma once

#include <cstdint>

#include "../mixer_block_params.h"
#include "activations.cuh"
#include "common.cuh"
#include "tile_conv.cuh"
#include "tile_dweight.cuh"
#include "tile_staging.cuh"
#include "tile_types.cuh"

namespace convmixer_kernels {
namespace cuda {

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
//   region  `stages` buffers of one item's staged tiles: CB input planes of rows x pitch
//           elements, then (passes that read grad_out) CB planes of TH x OUT_PITCH
//           elements, grad_out in and the result over it; with channels_last's landing
//           buffer, region 1 holds the same tiles' raw pixels
//   out     kApply's result: CB planes of TH x OUT_PITCH elements
//   dh      kGradH's dh for the weight gradient: per warp, two 16-bit copies of its task's
//           rows (dweight_on_tensor_cores), else CB planes of TH x DH_PITCH floats
//   w       float filters of the CUDA-core paths: rows of filter_pitch<K>(), or k*k (generic)
//   band    the B fragments, [CB][K][32 lanes][2], where registers are short: two channels
//           per warp, or kGradH whose dweight phase needs them
// The host sizes the launch with the same function.
template <typename T, int K, class Cfg, Mode MODE>
struct SmemLayout {
  static constexpr bool kMma = Dtype<T>::kMma && K > 0;
  static constexpr bool kBandInSmem = kMma && (Cfg::CPW > 1 || MODE == Mode::kGradH);
  size_t grad_out, region, out, dh, w, band, total;  // grad_out: its planes' offset in a region
  __host__ __device__ SmemLayout(int rows, int pitch, int k, int stages) {
    const size_t bits = sizeof(typename Dtype<T>::Bits);
    const size_t tile = static_cast<size_t>(Cfg::CB) * Cfg::TH * Cfg::OUT_PITCH * bits;
    grad_out = static_cast<size_t>(Cfg::CB) * rows * pitch * bits;
    region = grad_out + (stages_grad_out(MODE) ? tile : 0);
    out = stages * region;
    dh = out + (MODE == Mode::kApply ? tile : 0);
    // dh for the weight gradient: each warp's scratch of two 16-bit copies (tensor cores),
    // else float planes
    const size_t dh_bytes =
        dweight_on_tensor_cores<T, K>()
            ? static_cast<size_t>(kWarps) * DweightMma<(K > 0 ? K : 1), Cfg::NB>::kWarpElems * bits
             : static_cast<size_t>(Cfg::CB) * Cfg::TH * Cfg::DH_PITCH * sizeof(float);
    w = dh + (MODE == Mode::kGradH ? dh_bytes : 0);
    const size_t filters = kMma ? 0 : K > 0 ? static_cast<size_t>(K) * filter_pitch<K>() : static_cast<size_t>(k) * k;
    band = w + (Cfg::CB * filters * sizeof(float) + 15) / 16 * 16;
    total = band + (kBandInSmem ? static_cast<size_t>(Cfg::CB) * K * 32 * 2 * sizeof(uint32_t) : 0);
  }
};

// The image position of an item: (image, tile row, tile col), tile col fastest.
struct ItemPos {
  int n, h0, w0;
};

template <class Cfg>
__device__ __forceinline__ ItemPos item_pos(const TileArgs& a, int item) {
  const int tw = item % a.tiles_w;
  const int th = (item / a.tiles_w) % a.tiles_h;
  return {item / (a.tiles_w * a.tiles_h), th * Cfg::TH, tw * Cfg::TW};
}

// The position of the item after p, without item_pos's divisions.
template <class Cfg>
__device__ __forceinline__ ItemPos next_pos(const TileArgs& a, ItemPos p) {
  p.w0 += Cfg::TW;
  if (p.w0 >= a.tiles_w * Cfg::TW) {
    p.w0 = 0;
    p.h0 += Cfg::TH;
    if (p.h0 >= a.tiles_h * Cfg::TH) p.h0 = 0, ++p.n;
  }
  return p;
}

// Blocks per multiprocessor the kernels are compiled for (__launch_bounds__): the register
// budget; launch.cuh keeps shared memory from lowering it.
constexpr int kMinBlocksPerSm = 2;

template <typename T, int K, class Cfg, Mode MODE>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) tile_kernel(const TileArgs a) {
  using D = Dtype<T>;
  using Bits = typename D::Bits;
  constexpr bool kGeneric = K == 0;
  constexpr bool kMma = D::kMma && !kGeneric;
  constexpr int V = vec_elems<T>();
  constexpr int kCo = kGeneric ? 0 : templated_co<T>(K);
  constexpr int CB = Cfg::CB, TH = Cfg::TH, TW = Cfg::TW, NB = Cfg::NB, STRIPS = Cfg::STRIPS;
  constexpr int CPW = Cfg::CPW, TPW = Cfg::TPW, NOUT = Cfg::NOUT, OP = Cfg::OUT_PITCH, DHP = Cfg::DH_PITCH;
  constexpr bool kStagesAux = stages_grad_out(MODE);
  constexpr bool kWritesOut = MODE == Mode::kApply || MODE == Mode::kGradH || MODE == Mode::kGradX;
  constexpr int KB = kMma ? K : 1;                 // band fragments per channel
  // the weight gradient on tensor cores (tile_dweight.cuh), else DWG groups on CUDA cores
  constexpr bool kDwMma = dweight_on_tensor_cores<T, K>() && MODE == Mode::kGradH;
  using DwMma = DweightMma<kGeneric ? 1 : K, NB>;
  constexpr int DWG = kGeneric || kDwMma ? 1 : DwGroups<kGeneric ? 1 : K>::G;
  using F = Frag<kMma, NB>;
  constexpr bool kFastGelu = sizeof(Bits) == 2;  // within the rounding of 16-bit outputs (activations.cuh)
  // the residual's pair of columns starts at an even element when co is even (the generic
  // path's co is whole vectors): one 32-bit (float32: 64-bit) shared load instead of two
  constexpr bool kPairedResidual = kCo % 2 == 0;
  // elements per cp.async of the NCHW input rows: co columns before w0, a vector boundary
  constexpr int kCopy = copy_elems<T>(kCo);

  const int k = kGeneric ? a.k : K;
  const int pad = kGeneric ? a.pad : (K - 1) / 2;
  const int rows = kGeneric ? a.rows : TH + K - 1;
  const int pitch = kGeneric ? a.pitch : TW + 8;
  const int co = kGeneric ? a.co : kCo;
  const int plane_in = rows * pitch;

  extern __shared__ __align__(16) unsigned char smem[];
  using Smem = SmemLayout<T, K, Cfg, MODE>;
  const Smem layout(rows, pitch, k, a.stages);
  Bits* s_out = reinterpret_cast<Bits*>(smem + layout.out);
  float* s_dh = reinterpret_cast<float*>(smem + layout.dh);
  float* s_w = reinterpret_cast<float*>(smem + layout.w);
  uint32_t* s_band = reinterpret_cast<uint32_t*>(smem + layout.band);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // the warp's dh scratch of the tensor-core weight gradient (tile_dweight.cuh)
  Bits* const s_dw = kDwMma ? reinterpret_cast<Bits*>(smem + layout.dh) + warp * DwMma::kWarpElems : nullptr;
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
  float sum_dy[CPW], sum_dyx[CPW], sum_dh[CPW], dw[CPW][DWG], dw_mma[CPW][DwMma::kNT][4];
#pragma unroll
  for (int s = 0; s < CPW; ++s) {
    sum_dy[s] = sum_dyx[s] = sum_dh[s] = 0.0f;
#pragma unroll
    for (int q = 0; q < DWG; ++q) dw[s][q] = 0.0f;
#pragma unroll
    for (int nt = 0; nt < DwMma::kNT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) dw_mma[s][nt][r] = 0.0f;
  }
  if constexpr (kDwMma) {
    // the scratch's zeros beside each dh row; the tasks write only the rows themselves
    for (int u = lane; u < DwMma::kWarpElems * static_cast<int>(sizeof(Bits)) / 16; u += 32)
      reinterpret_cast<uint4*>(s_dw)[u] = make_uint4(0, 0, 0, 0);
  }
  if constexpr (MODE == Mode::kGradH && kGeneric) {
#pragma unroll
    for (int s = 0; s < CPW; ++s) {
      const int c = c0 + warp * CPW + s;
      if (c >= a.C) continue;
      for (int t = lane; t < k * k; t += 32) a.partial[(static_cast<int64_t>(slice) * a.q_count + t) * a.C + c] = 0.0f;
    }
  }

  // Staging (the pipeline at the top of this file). `landing`: channels_last with two
  // buffers, whose copies land raw in region 1.
  const bool two = a.stages == 2;
  const bool landing = two && a.nhwc && a.vec;
  Bits* const region0 = reinterpret_cast<Bits*>(smem);
  Bits* const region1 = reinterpret_cast<Bits*>(smem + layout.region);  // (only with two buffers)
  const int grad_out_at = static_cast<int>(layout.grad_out / sizeof(Bits));
  const Box in_box{rows, pitch, pitch, plane_in, 0, c0, -pad, -co};
  const Box out_box{TH, TW, OP, TH * OP, 0, c0, 0, 0};
  auto at = [](Box b, const ItemPos& p) {
    b.n = p.n, b.h0 += p.h0, b.w0 += p.w0;
    return b;
  };
  // The copies (or stores) of the tiles of the item at p into `dst`: planes, or raw pixels.
  auto stage = [&](const ItemPos& p, Bits* dst, bool raw) {
    const Box in = at(in_box, p), aux = at(out_box, p);
    if (!a.vec) {
      stage_box_elementwise<T, CB>(a, a.in, dst, in);
      if constexpr (kStagesAux) stage_box_elementwise<T, CB>(a, a.aux, dst + grad_out_at, aux);
    } else if (!a.nhwc) {
      copy_box_async<T, CB, kGeneric ? V : kCopy>(a, a.in, dst, in);
      if constexpr (kStagesAux) copy_box_async<T, CB, V>(a, a.aux, dst + grad_out_at, aux);
    } else if (raw) {
      land_box_async<T, CB>(a, a.in, dst, in);
      if constexpr (kStagesAux) land_box_async<T, CB>(a, a.aux, dst + grad_out_at, aux);
    } else {
      stage_box_nhwc<T, CB>(a, a.in, dst, in);
      if constexpr (kStagesAux) stage_box_nhwc<T, CB>(a, a.aux, dst + grad_out_at, aux);
    }
    cp_async_commit();
  };

  // channels_last with a landing buffer: the next item's raw pixels, once they have
  // arrived, into the planes (free once the current item is done with them)
  auto unpack_next = [&] {
    cp_async_wait_all();
    __syncthreads();
    unpack_box<T, CB>(region1, region0, in_box);
    if constexpr (kStagesAux) unpack_box<T, CB>(region1 + grad_out_at, region0 + grad_out_at, out_box);
    __syncthreads();
  };
  ItemPos pos = item_pos<Cfg>(a, item_begin);
  if (two && item_begin < item_end) {
    stage(pos, landing ? region1 : region0, landing);
    if (landing) unpack_next();
  }
  for (int item = item_begin; item < item_end; ++item) {
    const int h0 = pos.h0, w0 = pos.w0;
    const bool more = item + 1 < item_end;
    const ItemPos next = next_pos<Cfg>(a, pos);
    const bool odd = two && !landing && ((item - item_begin) & 1);  // NCHW's buffers alternate
    // Two buffers: the next item's copies, into the buffer item - 1 read (or the landing
    // buffer, unpacked at the end of item - 1); one: this item's, after item - 1 is done.
    if (!two || more) stage(two ? next : pos, landing || (two && !odd) ? region1 : region0, landing);
    if (!landing) {
      if (two && more) {
        cp_async_wait<1>();  // this item's group, not the one just issued
      } else {
        cp_async_wait_all();
      }
      __syncthreads();
    }
    Bits* const s_in = odd ? region1 : region0;
    Bits* const s_res = kStagesAux ? s_in + grad_out_at : s_out;  // grad_out in, the result out

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
      Bits* out_plane = s_res + cl * TH * OP;

      if constexpr (MODE == Mode::kApply) {
        with_activation<kFastGelu>(a.act, [&](auto act) {
          using Act = decltype(act);
#pragma unroll
          for (int e = 0; e < NOUT; e += 2) {
            const int tr = strip * 16 + F::row(e, lane), tc = F::col(e, lane);
            const Bits* xs = plane + (tr + pad) * pitch + tc + co;
            float x[2], y[2];
            if constexpr (kPairedResidual) {
              load_pair<T>(xs, x[0], x[1]);
            } else {
              x[0] = D::to_float(ld_shared(xs)), x[1] = D::to_float(ld_shared(xs + 1));
            }
#pragma unroll
            for (int p = 0; p < 2; ++p) y[p] = x[p] + fmaf(Act::fwd(acc[e + p] + q.bias) - q.mean, q.scale, q.shift);
            store_pair<T>(out_plane + tr * OP + tc, y[0], y[1]);
          }
        });
      } else if constexpr (MODE == Mode::kStats) {
        with_activation<kFastGelu>(a.act, [&](auto act) {
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
        with_activation<kFastGelu>(a.act, [&](auto act) {
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
        with_activation<kFastGelu>(a.act, [&](auto act) {
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
            if constexpr (kDwMma) {
              dweight_store_dh<T, K, NB>(s_dw, tr - strip * 16, tc, dh[0], dh[1]);
            } else {
              *reinterpret_cast<float2*>(s_dh + cl * TH * DHP + tr * DHP + tc) = make_float2(dh[0], dh[1]);
            }
          }
          sum_dh[slot] += sdh;
          sum_dy[slot] += sd;
          sum_dyx[slot] += sdx;
        });
        if constexpr (kDwMma) {
          __syncwarp();  // the task's dh rows, written by the warp's lanes above
          dweight_task_mma<T, K, NB>(plane, s_dw, strip, dw_mma[slot], lane);
          __syncwarp();  // read before the next task's rows overwrite them
        }
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

    if constexpr (MODE == Mode::kGradH && !kDwMma) {
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
      store_box<T, CB>(a, s_res, a.out, at(out_box, pos));
    }
    __syncthreads();  // the tiles are free for the next item's staging
    if (landing && more) unpack_next();
    pos = next;
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
        if constexpr (kDwMma) {
          // element r of tile nt: D[j][i] = dweight[i][j], j = g (+ 8), i = 8 nt + 2 t (+ 1)
#pragma unroll
          for (int nt = 0; nt < DwMma::kNT; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
              const int j = (lane >> 2) + 8 * (r >> 1), i = 8 * nt + 2 * (lane & 3) + (r & 1);
              if (i < K && j < K) part[static_cast<int64_t>(i * K + j) * a.C] = dw_mma[s][nt][r];
            }
        } else if constexpr (!kGeneric) {
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
