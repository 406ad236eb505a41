// Staging of the tile engine (tile.cuh): the input tile with its halo, and output-sized
// tiles (grad_out in, the result out), between global and shared memory in both layouts.
#pragma once

#include <cstdint>

#include "common.cuh"
#include "tile_types.cuh"

namespace convmixer_kernels {
namespace cuda {

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

}  // namespace cuda
}  // namespace convmixer_kernels
