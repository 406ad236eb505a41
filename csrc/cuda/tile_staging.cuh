// Staging of the tile engine (tile.cuh) between global and shared memory, in both layouts:
// boxes of CB per-channel planes (the input tile with its halo, grad_out's tile) in, the
// result tile out.
//
//   NCHW, 16-byte aligned rows: cp.async, whole aligned copies of G elements straight into
//     the planes (the tile's leading columns make every copy aligned: templated_co).
//   channels_last, aligned: a pixel's CB channels are whole 16-byte vectors, which land in
//     the planes transposed, V pixels x V channels at a time in registers (one 16-byte
//     shared store per vector): read from global memory (stage_box_nhwc), or, when the
//     pipeline has a second buffer, cp.async'd raw into it first and transposed from
//     there after the wait (land_box_async, unpack_box).
//   anything else (unaligned buffers, odd widths): element by element, synchronously.
#pragma once

#include <cstdint>

#include "common.cuh"
#include "tile_types.cuh"

namespace convmixer_kernels {
namespace cuda {

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// Element-wise staging issues up to kBatch loads before their stores, so each thread keeps
// several loads in flight.
constexpr int kBatch = 4;

// CB planes in shared memory and their window of the image: element (r, s) of plane cl,
// at cl * plane + r * pitch + s, is image element (n, c0 + cl, h0 + r, w0 + s) for r < rows
// and s < cols; zero outside the image and for channels >= C.
struct Box {
  int rows, cols, pitch, plane;
  int n, c0, h0, w0;
};

// V x V transpose of 16-byte vectors (V elements each): px[j] element e becomes px[e]
// element j. float: 4 x 4 words, only a renaming of registers; 16-bit: 32 byte permutes.
template <typename Bits>
__device__ __forceinline__ void transpose_vectors(uint4 (&px)[16 / sizeof(Bits)]) {
  constexpr int V = 16 / static_cast<int>(sizeof(Bits));
  uint32_t in[V][4], out[V][4];
#pragma unroll
  for (int j = 0; j < V; ++j) in[j][0] = px[j].x, in[j][1] = px[j].y, in[j][2] = px[j].z, in[j][3] = px[j].w;
#pragma unroll
  for (int e = 0; e < V; ++e)
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      if constexpr (V == 4) {
        out[e][m] = in[m][e];
      } else {  // word m of element e's vector: pixels 2m, 2m + 1, from halves e % 2 of word e / 2
        out[e][m] = __byte_perm(in[2 * m][e / 2], in[2 * m + 1][e / 2], e & 1 ? 0x7632 : 0x5410);
      }
    }
#pragma unroll
  for (int e = 0; e < V; ++e) px[e] = make_uint4(out[e][0], out[e][1], out[e][2], out[e][3]);
}

// Visits an NCHW box in 16-byte vectors (V elements) of its planes' rows: each thread owns
// one (plane, vector column) and every `groups`-th row of it (threads share a column where
// a row of the box's planes has fewer vectors than there are threads), so that both
// addresses advance by a constant per row. f(at, index, gw, live): the vector's offset in
// the planes, the offset in global memory of its first element (valid where that element
// lies in the image), that element's image column, and whether the row lies in the image
// with a channel < C.
template <int CB, int V, class F>
__device__ __forceinline__ void for_box_vectors_nchw(const TileArgs& a, const Box& box, const F& f) {
  const int tid = threadIdx.x;
  const int per_row = box.cols / V, pairs = CB * per_row;
  const int groups = pairs < kThreads ? kThreads / pairs : 1;
  for (int q = tid; q < pairs * groups; q += kThreads) {
    const int pair = q % pairs, first = q / pairs;
    const int cl = pair / per_row, col = (pair - cl * per_row) * V;
    const int gw = box.w0 + col;
    const bool channel = box.c0 + cl < a.C;
    const int64_t step = static_cast<int64_t>(groups) * a.W;
    int64_t index = offset_nchw(a, box.n, box.c0 + cl, box.h0 + first, gw);
    int at = cl * box.plane + first * box.pitch + col;
    for (int r = first; r < box.rows; r += groups, index += step, at += groups * box.pitch)
      f(at, index, gw, channel && static_cast<unsigned>(box.h0 + r) < static_cast<unsigned>(a.H));
  }
}

// NCHW, rows 16-byte aligned in global memory (a.vec): cp.async straight into the planes,
// each 16-byte vector of them as V / G copies of G elements, which box.w0 (a multiple of G)
// keeps aligned in global memory too; zero-filled outside the image (W is whole vectors, so
// a copy is all inside or all outside).
template <typename T, int CB, int G>
__device__ __forceinline__ void copy_box_async(const TileArgs& a, const void* gsrc, typename Dtype<T>::Bits* dst,
                                               const Box& box) {
  using Bits = typename Dtype<T>::Bits;
  constexpr int V = vec_elems<T>(), kBytes = G * static_cast<int>(sizeof(Bits));
  const Bits* src = static_cast<const Bits*>(gsrc);
  for_box_vectors_nchw<CB, V>(a, box, [&](int at, int64_t index, int gw, bool live) {
#pragma unroll
    for (int g = 0; g < V; g += G) {
      const bool inside = live & (static_cast<unsigned>(gw + g) < static_cast<unsigned>(a.W));
      cp_async<kBytes>(dst + at + g, src + (inside ? index + g : 0), inside ? kBytes : 0);
    }
  });
}

// Where pixel p of a box (p = r * cols + s) lies among the raw pixels cp.async'd for the
// channels_last transpose: XOR-swizzled within its group of V pixels by the group's index,
// so that the transpose's V-pixel reads (lanes on consecutive groups) hit distinct banks.
template <int V>
__device__ __forceinline__ int landing_pixel(int p) {
  return p ^ ((p / V) & (V - 1));
}

// channels_last, aligned (a.vec): the box's pixels, raw (CB channels = CB / V vectors
// each), cp.async'd into `landing`, zero-filled outside the image and for channels >= C.
// Each thread owns one (column, vector) and every `groups`-th row of it, as in
// for_box_vectors_nchw.
template <typename T, int CB>
__device__ __forceinline__ void land_box_async(const TileArgs& a, const void* gsrc, typename Dtype<T>::Bits* landing,
                                               const Box& box) {
  using Bits = typename Dtype<T>::Bits;
  constexpr int V = vec_elems<T>(), NV = CB / V;
  static_assert(CB % V == 0, "a pixel's CB channels are whole vectors");
  const Bits* src = static_cast<const Bits*>(gsrc);
  const int tid = threadIdx.x;
  const int pairs = box.cols * NV;
  const int groups = pairs < kThreads ? kThreads / pairs : 1;
  for (int q = tid; q < pairs * groups; q += kThreads) {
    const int pair = q % pairs, first = q / pairs;
    const int s = pair / NV, v = pair - s * NV;
    const int gw = box.w0 + s;
    const bool live = box.c0 + v * V < a.C && gw >= 0 && gw < a.W;
    const int64_t step = static_cast<int64_t>(groups) * a.W * a.C;
    int64_t index = offset_nhwc(a, box.n, box.c0 + v * V, box.h0 + first, gw);
    for (int r = first; r < box.rows; r += groups, index += step) {
      const bool inside = live && static_cast<unsigned>(box.h0 + r) < static_cast<unsigned>(a.H);
      cp_async<16>(landing + (landing_pixel<V>(r * box.cols + s) * NV + v) * V, inside ? src + index : src,
                   inside ? 16 : 0);
    }
  }
}

// channels_last into the planes: each unit is V pixels of a row (load(p, r, s, v): pixel p
// = (r, s)'s vector v, channels v * V ...) transposed into V channel rows of V pixels.
template <typename T, int CB, class Load>
__device__ __forceinline__ void transpose_into_planes(typename Dtype<T>::Bits* dst, const Box& box, const Load& load) {
  using Bits = typename Dtype<T>::Bits;
  constexpr int V = vec_elems<T>(), NV = CB / V;
  const int units = box.rows * box.cols / V * NV;
  for (int u = threadIdx.x; u < units; u += kThreads) {
    const int v = u % NV, p = u / NV * V;
    const int r = p / box.cols, s = p - r * box.cols;
    uint4 px[V];
#pragma unroll
    for (int j = 0; j < V; ++j) px[j] = load(p + j, r, s + j, v);
    transpose_vectors<Bits>(px);
#pragma unroll
    for (int e = 0; e < V; ++e) *reinterpret_cast<uint4*>(dst + (v * V + e) * box.plane + r * box.pitch + s) = px[e];
  }
}

// The raw pixels land_box_async copied, into the planes (after the wait and a barrier).
template <typename T, int CB>
__device__ __forceinline__ void unpack_box(const typename Dtype<T>::Bits* landing, typename Dtype<T>::Bits* dst,
                                           const Box& box) {
  constexpr int V = vec_elems<T>(), NV = CB / V;
  transpose_into_planes<T, CB>(dst, box, [&](int p, int, int, int v) {
    return ld_shared(reinterpret_cast<const uint4*>(landing + (landing_pixel<V>(p) * NV + v) * V));
  });
}

// channels_last, aligned, without a landing buffer: from global memory into the planes.
template <typename T, int CB>
__device__ __forceinline__ void stage_box_nhwc(const TileArgs& a, const void* gsrc, typename Dtype<T>::Bits* dst,
                                               const Box& box) {
  using Bits = typename Dtype<T>::Bits;
  constexpr int V = vec_elems<T>();
  const Bits* src = static_cast<const Bits*>(gsrc);
  transpose_into_planes<T, CB>(dst, box, [&](int, int r, int s, int v) {
    const int c = box.c0 + v * V, gh = box.h0 + r, gw = box.w0 + s;
    const bool inside = c < a.C && gh >= 0 && gh < a.H && gw >= 0 && gw < a.W;
    return inside ? ldg16(src + offset_nhwc(a, box.n, c, gh, gw)) : make_uint4(0, 0, 0, 0);
  });
}

// Element u of a box in the element-wise order, which follows global memory (channels
// fastest in channels_last, columns in NCHW): its plane, row and column.
struct BoxElem {
  int cl, r, s;
};

template <int CB>
__device__ __forceinline__ BoxElem box_elem(const TileArgs& a, const Box& box, int u) {
  int cl, pix;
  if (a.nhwc) {
    cl = u % CB, pix = u / CB;
  } else {
    cl = u / (box.rows * box.cols), pix = u - cl * box.rows * box.cols;
  }
  const int r = pix / box.cols;
  return {cl, r, pix - r * box.cols};
}

// Either layout, element by element (unaligned buffers, or a width / channel count that
// is not whole vectors); the unit order follows global memory.
template <typename T, int CB>
__device__ __forceinline__ void stage_box_elementwise(const TileArgs& a, const void* gsrc,
                                                      typename Dtype<T>::Bits* dst, const Box& box) {
  using Bits = typename Dtype<T>::Bits;
  const Bits* src = static_cast<const Bits*>(gsrc);
  const int units = CB * box.rows * box.cols;
  for (int u0 = threadIdx.x; u0 < units; u0 += kBatch * kThreads) {
    Bits val[kBatch];
    int at[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int u = u0 + b * kThreads;
      val[b] = 0;
      at[b] = -1;
      if (u < units) {
        const BoxElem e = box_elem<CB>(a, box, u);
        at[b] = e.cl * box.plane + e.r * box.pitch + e.s;
        const int c = box.c0 + e.cl, gh = box.h0 + e.r, gw = box.w0 + e.s;
        if (c < a.C && gh >= 0 && gh < a.H && gw >= 0 && gw < a.W) val[b] = src[offset(a, box.n, c, gh, gw)];
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      if (at[b] >= 0) dst[at[b]] = val[b];
  }
}

// The planes of a result box out to global memory where they lie inside the image (box
// inside the image's top-left corner: h0, w0 >= 0). 16-byte vectors where the layout's
// contiguous dimension is whole vectors (a.vec): NCHW rows as they are, channels_last
// pixels transposed from V channel rows; else element by element.
template <typename T, int CB>
__device__ __forceinline__ void store_box(const TileArgs& a, const typename Dtype<T>::Bits* planes, void* gdst,
                                          const Box& box) {
  using Bits = typename Dtype<T>::Bits;
  constexpr int V = vec_elems<T>(), NV = CB / V;
  Bits* dst = static_cast<Bits*>(gdst);
  if (a.vec && !a.nhwc) {
    for_box_vectors_nchw<CB, V>(a, box, [&](int at, int64_t index, int gw, bool live) {
      const uint4 val = ld_shared(reinterpret_cast<const uint4*>(planes + at));
      if (live && gw < a.W) *reinterpret_cast<uint4*>(dst + index) = val;
    });
  } else if (a.vec) {
    const int units = box.rows * box.cols / V * NV;
    for (int u = threadIdx.x; u < units; u += kThreads) {
      const int v = u % NV, p = u / NV * V;
      const int r = p / box.cols, s = p - r * box.cols;
      const int c = box.c0 + v * V, gh = box.h0 + r;
      uint4 px[V];
#pragma unroll
      for (int e = 0; e < V; ++e)
        px[e] = ld_shared(reinterpret_cast<const uint4*>(planes + (v * V + e) * box.plane + r * box.pitch + s));
      transpose_vectors<Bits>(px);
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (c < a.C && gh < a.H && box.w0 + s + j < a.W)
          *reinterpret_cast<uint4*>(dst + offset_nhwc(a, box.n, c, gh, box.w0 + s + j)) = px[j];
    }
  } else {
    const int units = CB * box.rows * box.cols;
    for (int u = threadIdx.x; u < units; u += kThreads) {
      const BoxElem e = box_elem<CB>(a, box, u);
      const int c = box.c0 + e.cl, gh = box.h0 + e.r, gw = box.w0 + e.s;
      if (c < a.C && gh < a.H && gw < a.W)
        dst[offset(a, box.n, c, gh, gw)] = ld_shared(planes + e.cl * box.plane + e.r * box.pitch + e.s);
    }
  }
}

}  // namespace cuda
}  // namespace convmixer_kernels
