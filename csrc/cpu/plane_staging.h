// NCHW: the unit of work is one (n, c) plane, copied with its zero padding into a float
// (double) buffer and convolved there (conv_kernels.h, or bf16_dot_conv.h for bf16 at the
// avx512_bf16 level).
//
// Included once per capability level, by mixer_block_cpu.cpp only: its contents sit in
// that translation unit's anonymous namespace.
#pragma once

#include "conv_kernels.h"
#include "kernel_common.h"
#if CMK_HAVE_BF16_DOT
#include "bf16_dot_conv.h"
#endif

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {
namespace {

constexpr int kPlaneRows = 4;  // output rows per register tile of conv_plane

template <typename T>
struct PlaneGeom {
  int H, W, K, left;
  int nv;         // vectors per register-tile column chunk (1 or 2)
  int cols;       // computed output columns: W rounded up to the chunk
  int rows;       // computed output rows: H rounded up to kPlaneRows
  int64_t pitch;  // padded row length, >= cols + K - 1
  int64_t prows;  // padded rows = rows + K - 1
  int64_t plane;  // elements of one padded plane

  explicit PlaneGeom(const Geometry& g) {
    constexpr int VL = kLanes<T>;
    H = static_cast<int>(g.height);
    W = static_cast<int>(g.width);
    K = g.kernel_size;
    left = (K - 1) / 2;
    nv = W > VL ? 2 : 1;
    cols = static_cast<int>(round_up(W, nv * VL));
    rows = static_cast<int>(round_up(H, kPlaneRows));
    pitch = round_up(cols + K - 1, VL);
    prows = rows + K - 1;
    plane = prows * pitch;
  }
};

template <typename T, int KT>
void conv_plane_k(const PlaneGeom<T>& pg, const T* in, const T* w, T bias, T* out) {
  if (pg.nv == 2) {
    conv_plane<T, KT, 2, kPlaneRows>(in, pg.pitch, w, bias, out, pg.cols, pg.rows, pg.cols, pg.K);
  } else {
    conv_plane<T, KT, 1, kPlaneRows>(in, pg.pitch, w, bias, out, pg.cols, pg.rows, pg.cols, pg.K);
  }
}

// Per-thread buffers of the NCHW path. `in` holds x (padding at (left, left)); `dh` holds
// dh for the transposed convolution (padding at (K-1-left, K-1-left)), with one zero guard
// row above and below for corr_plane; `h` the convolution output; `dy` the plane of dy.
template <typename T>
struct PlaneState {
  Scratch<T> in, h, dh, dy, row;
  T* dh_base = nullptr;
  std::vector<T> w, wflip;
  // The bf16 tap-pair planes of bf16_dot_conv.h, sized on first use.
  Scratch<uint32_t> pairs;
  std::vector<uint32_t> wpairs;
  PlaneState(const PlaneGeom<T>& pg, bool backward) {
    in.resize(pg.plane);
    h.resize(static_cast<size_t>(pg.rows) * pg.cols);
    row.resize(pg.cols);
    w.resize(static_cast<size_t>(pg.K) * pg.K);
    if (backward) {
      dh.resize(pg.plane + 2 * pg.pitch);
      dh_base = dh.data() + pg.pitch;
      dy.resize(static_cast<size_t>(pg.rows) * pg.cols);
      wflip.resize(w.size());
    }
  }
};

template <typename S, typename T>
void load_plane(const Geometry& g, const S* src, int64_t n, int64_t c, T* dst, int64_t pitch, int64_t offset) {
  const S* base = src + n * g.stride_n + c * g.stride_c;
  for (int64_t i = 0; i < g.height; ++i)
    load_row(dst + (i + offset) * pitch + offset, base + i * g.stride_h, g.width, g.stride_w);
}

template <typename S, typename T>
void load_weights(const S* weight, int64_t c, int K, T* w) {
  const S* src = weight + c * K * K;
  for (int t = 0; t < K * K; ++t) w[t] = static_cast<T>(src[t]);
}

// The start of every NCHW pass: plane (n, c) of x with its padding into st.in, the
// channel's taps into st.w, and h = conv(x) + bias into st.h.
template <int KT, typename S, typename T>
void load_and_convolve_plane(const Geometry& g, const PlaneGeom<T>& pg, const S* x, const S* weight, const S* bias,
                             int64_t n, int64_t c, PlaneState<T>& st) {
  load_plane(g, x, n, c, st.in.data(), pg.pitch, pg.left);
  load_weights(weight, c, pg.K, st.w.data());
  const T b = bias ? static_cast<T>(bias[c]) : T(0);
#if CMK_HAVE_BF16_DOT
  if constexpr (std::is_same<S, c10::BFloat16>::value) {
    if (!st.pairs.data()) {
      st.pairs.resize(pg.plane);
      st.wpairs.resize(static_cast<size_t>(pg.K) * (pg.K / 2));
    }
    make_bf16_pairs(st.in.data(), pg.pitch, pg.prows, st.pairs.data());
    make_bf16_weight_pairs(st.w.data(), pg.K, st.wpairs.data());
    const auto conv = pg.nv == 2 ? conv_plane_bf16<KT, 2, kPlaneRows> : conv_plane_bf16<KT, 1, kPlaneRows>;
    return conv(st.pairs.data(), st.in.data(), pg.pitch, st.wpairs.data(), st.w.data(), b, st.h.data(), pg.cols,
                pg.rows, pg.cols, pg.K);
  }
#endif
  conv_plane_k<T, KT>(pg, st.in.data(), st.w.data(), b, st.h.data());
}

}  // namespace
}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
