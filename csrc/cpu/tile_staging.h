// channels_last: the unit of work is one image and a block of channels, staged as a
// padded tile vectorized along C.
//
// Included once per capability level, by mixer_block_cpu.cpp only: its contents sit in
// that translation unit's anonymous namespace.
#pragma once

#include "conv_kernels.h"
#include "kernel_common.h"

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {
namespace {

template <typename T>
struct TileGeom {
  static constexpr int kCBV = 1;  // vectors per channel block
  static constexpr int kCB = kCBV * kLanes<T>;
  static constexpr int kJ = 8;  // output pixels per register tile of conv_tile_cl
  int H, W, K, left;
  int64_t C, blocks;
  int pixels;     // computed output pixels per row: W rounded up to kJ
  int64_t pw;     // padded pixels per row = pixels + K - 1
  int64_t prow;   // elements per padded row
  int64_t plane;  // elements of one padded tile

  explicit TileGeom(const Geometry& g) {
    H = static_cast<int>(g.height);
    W = static_cast<int>(g.width);
    K = g.kernel_size;
    left = (K - 1) / 2;
    C = g.channels;
    blocks = (C + kCB - 1) / kCB;
    pixels = static_cast<int>(round_up(W, kJ));
    pw = pixels + K - 1;
    prow = pw * kCB;
    plane = (H + K - 1) * prow;
  }
};

// Convolves `rows` output rows (all of them by default) of a padded tile.
template <typename T, int KT>
void conv_tile_k(const TileGeom<T>& tg, const T* in, const T* wt, const T* bias, T* out, int rows = -1) {
  conv_tile_cl<T, KT, TileGeom<T>::kJ, TileGeom<T>::kCBV>(in, tg.prow, wt, bias, out,
                                                           int64_t(tg.pixels) * TileGeom<T>::kCB,
                                                           rows < 0 ? tg.H : rows, tg.pixels, tg.K);
}

// One pixel's nc channels (nc <= one vector) as a vector, lanes past nc zero; the full
// block, the common case, is a plain vector load for float and a fixed-length conversion
// loop the compiler vectorizes otherwise.
template <typename T, typename S>
inline Vec<T> load_lanes(const S* src, int nc) {
  constexpr int VL = kLanes<T>;
  Vec<T> v{};
  if (nc == VL) {
    if constexpr (std::is_same<S, T>::value) return vload(src);
    for (int l = 0; l < VL; ++l) v[l] = static_cast<T>(src[l]);
  } else {
    for (int l = 0; l < nc; ++l) v[l] = static_cast<T>(src[l]);
  }
  return v;
}

template <typename T, typename S>
inline void store_lanes(S* dst, const Vec<T>& v, int nc) {
  constexpr int VL = kLanes<T>;
  if (nc == VL) {
    if constexpr (std::is_same<S, T>::value) {
      vstore(dst, v);
    } else {
      for (int l = 0; l < VL; ++l) dst[l] = static_cast<S>(v[l]);
    }
  } else {
    for (int l = 0; l < nc; ++l) dst[l] = static_cast<S>(v[l]);
  }
}

template <typename T>
struct TileState {
  static constexpr int kCB = TileGeom<T>::kCB;
  Scratch<T> in, h, dh, dy, w, wflip, bias, zero, dw;
  TileState(const TileGeom<T>& tg, bool backward) {
    const size_t taps = static_cast<size_t>(tg.K) * tg.K;
    in.resize(tg.plane);
    h.resize(static_cast<size_t>(tg.H) * tg.pixels * kCB);
    w.resize(taps * kCB);
    bias.resize(kCB);
    if (backward) {
      dh.resize(tg.plane);
      dy.resize(static_cast<size_t>(tg.H) * tg.W * kCB);
      wflip.resize(taps * kCB);
      zero.resize(kCB);
      dw.resize(taps * kCB);
    }
  }
};

// Copies x[n, c0 : c0 + nc, :, :] into the tile buffer at pixel offset (offset, offset);
// lanes past nc are zeroed so that a partial block computes on zeros.
template <typename S, typename T>
void load_tile(const Geometry& g, const S* src, int64_t n, int64_t c0, int nc, T* dst, int64_t pw,
               int64_t offset) {
  constexpr int CB = TileGeom<T>::kCB;
  static_assert(TileGeom<T>::kCBV == 1, "a channel block is one vector");
  const S* base = src + n * g.stride_n + c0;
  for (int64_t i = 0; i < g.height; ++i) {
    for (int64_t j = 0; j < g.width; ++j)
      vstore(dst + ((i + offset) * pw + j + offset) * CB,
             load_lanes<T>(base + i * g.stride_h + j * g.stride_w, nc));
  }
}

// Writes nc lanes of a [H][W][CB] buffer to out[n, c0 : c0 + nc, :, :].
template <typename S, typename T>
void store_tile(const Geometry& g, S* dst, int64_t n, int64_t c0, int nc, const T* src, int64_t src_pw) {
  constexpr int CB = TileGeom<T>::kCB;
  S* base = dst + n * g.stride_n + c0;
  for (int64_t i = 0; i < g.height; ++i) {
    for (int64_t j = 0; j < g.width; ++j)
      store_lanes<T>(base + i * g.stride_h + j * g.stride_w, vload(src + (i * src_pw + j) * CB), nc);
  }
}

// wt[t][l] = weight[c0 + l][t] (zero past nc); `flip` reverses the taps for the
// transposed convolution.
template <typename S, typename T>
void load_tile_weights(const S* weight, int64_t c0, int nc, int K, bool flip, T* wt) {
  constexpr int CB = TileGeom<T>::kCB;
  const int taps = K * K;
  for (int t = 0; t < taps; ++t) {
    const int src_t = flip ? taps - 1 - t : t;
    for (int l = 0; l < CB; ++l) wt[t * CB + l] = l < nc ? static_cast<T>(weight[(c0 + l) * taps + src_t]) : T(0);
  }
}

template <typename T>
void load_channel_vec(const std::vector<T>& v, int64_t c0, int nc, T* dst) {
  constexpr int CB = TileGeom<T>::kCB;
  for (int l = 0; l < CB; ++l) dst[l] = l < nc ? v[c0 + l] : T(0);
}

// The unit of the channels_last path: image n, channels c0 .. c0 + nc.
struct TileBlock {
  int64_t n, c0;
  int nc;
};

template <typename T>
TileBlock tile_block(const TileGeom<T>& tg, int64_t channels, int64_t u) {
  const int64_t c0 = (u % tg.blocks) * TileGeom<T>::kCB;
  return TileBlock{u / tg.blocks, c0, static_cast<int>(std::min<int64_t>(TileGeom<T>::kCB, channels - c0))};
}

// v[c0 : c0 + nc] of a per-channel vector as one SIMD vector, zero past nc.
template <typename T>
Vec<T> channel_vec(const std::vector<T>& v, const TileBlock& b) {
  alignas(64) T tmp[TileGeom<T>::kCB];
  load_channel_vec(v, b.c0, b.nc, tmp);
  return vload(tmp);
}

// A per-channel parameter in the accumulation type, zeros when absent (no conv bias).
template <typename T, typename S>
std::vector<T> per_channel(const S* v, int64_t channels) {
  std::vector<T> out(channels, T(0));
  if (v)
    for (int64_t c = 0; c < channels; ++c) out[c] = static_cast<T>(v[c]);
  return out;
}

// The start of every channels_last pass: the block's x tile with its halo into st.in,
// its taps into st.w and its conv bias into st.bias.
template <typename S, typename T>
void load_tile_inputs(const Geometry& g, const TileGeom<T>& tg, const S* x, const S* weight,
                      const std::vector<T>& bias, const TileBlock& b, TileState<T>& st) {
  load_tile(g, x, b.n, b.c0, b.nc, st.in.data(), tg.pw, tg.left);
  load_tile_weights(weight, b.c0, b.nc, tg.K, false, st.w.data());
  load_channel_vec(bias, b.c0, b.nc, st.bias.data());
}

}  // namespace
}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
