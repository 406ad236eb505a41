// The fused CPU kernels of the mixer block y = x + BN(act(dwconv(x) + b)).
//
// Depthwise means every pass but the BN statistics is local to one (n, c) plane, so the
// unit of work is a plane (NCHW: vectorized along W) or a tile of one image and a block
// of channels (channels_last: vectorized along C). A thread copies its unit's input, with
// the 'same' zero padding, into a float buffer (double for double) once, runs the
// register-blocked convolution from conv_kernels.h on it and applies the elementwise
// epilogue; bf16/half are converted on the way in and rounded once on the way out.
//
// Reductions (BN statistics, dgamma, dbeta, dbias, dweight) are written as per-(n, c)
// partials and merged over n in a fixed order after the parallel loop, so every result
// is bitwise independent of the thread count.
#include "mixer_block_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "activations.h"
#include "conv_kernels.h"
#include "simd.h"

// The levels compiled with AMX (setup.py's "amx") run the bf16 NCHW convolutions on
// its tiles; everything else is the same code on every level.
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define CMK_HAVE_AMX 1
#include "amx_conv.h"
#include "amx_staging.h"
#else
#define CMK_HAVE_AMX 0
#endif
#if defined(__AVX512BW__)
#include "bf16_convert.h"
#endif
// The levels with AVX-512 BF16 but no AMX ("avx512_bf16": Zen 4) convolve bf16 NCHW
// planes with vdpbf16ps on pairs of taps.
#if defined(__AVX512BF16__) && !CMK_HAVE_AMX
#define CMK_HAVE_BF16_DOT 1
#include "bf16_dot_conv.h"
#else
#define CMK_HAVE_BF16_DOT 0
#endif

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;

template <int N>
using IntC = std::integral_constant<int, N>;

// Calls f(IntC<k>{}) with the kernel sizes that get unrolled kernels (float only: double
// serves gradcheck, where the generic path is fast enough), else f(IntC<0>{}).
template <typename T, typename F>
void with_kernel_size(int k, F&& f) {
  if constexpr (std::is_same<T, float>::value) {
    switch (k) {
      case 3:
        return f(IntC<3>{});
      case 5:
        return f(IntC<5>{});
      case 7:
        return f(IntC<7>{});
      case 9:
        return f(IntC<9>{});
      default:
        break;
    }
  }
  f(IntC<0>{});
}

// Runs body(unit, thread_state) for unit in [0, units) over the OpenMP team that torch's
// thread setting asks for, with one State per thread built by make_state().
template <typename MakeState, typename Body>
void parallel_units(int64_t units, MakeState&& make_state, Body&& body) {
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), units)));
#pragma omp parallel num_threads(threads)
  {
    auto state = make_state();
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) body(u, state);
  }
}

template <typename T>
IVec<T> lane_index() {
  IVec<T> idx;
  for (int l = 0; l < kLanes<T>; ++l) idx[l] = l;
  return idx;
}

// Contiguous bf16 rows convert 16 lanes at a time where AVX-512BW is there (bitwise the
// same rounding as the casts); everything else converts element by element.
template <typename T, typename S>
constexpr bool kBf16ToFloat = std::is_same<S, c10::BFloat16>::value && std::is_same<T, float>::value;

template <typename T, typename S>
inline void load_row(T* dst, const S* src, int64_t n, int64_t stride) {
#if defined(__AVX512BW__)
  if constexpr (kBf16ToFloat<T, S>) {
    if (stride == 1) return bf16_row_to_float(dst, reinterpret_cast<const uint16_t*>(src), n);
  }
#endif
  if (stride == 1) {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j * stride]);
  }
}

template <typename T, typename S>
inline void store_row(S* dst, int64_t stride, const T* src, int64_t n) {
#if defined(__AVX512BW__)
  if constexpr (kBf16ToFloat<T, S>) {
    if (stride == 1) return float_row_to_bf16(reinterpret_cast<uint16_t*>(dst), src, n);
  }
#endif
  if (stride == 1) {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<S>(src[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j * stride] = static_cast<S>(src[j]);
  }
}

// Per-channel BN quantities in the accumulation type.
template <typename T>
struct ChannelParams {
  std::vector<T> gamma, beta, mean, rstd;
};

template <typename T>
ChannelParams<T> channel_params(int64_t C, const void* gamma, const void* beta, const void* mean,
                                const void* var, double eps) {
  ChannelParams<T> p;
  p.gamma.assign(C, T(1));
  p.beta.assign(C, T(0));
  p.mean.assign(C, T(0));
  p.rstd.assign(C, T(1));
  for (int64_t c = 0; c < C; ++c) {
    if (gamma) p.gamma[c] = static_cast<const T*>(gamma)[c];
    if (beta) p.beta[c] = static_cast<const T*>(beta)[c];
    if (mean) p.mean[c] = static_cast<const T*>(mean)[c];
    if (var) p.rstd[c] = T(1) / std::sqrt(static_cast<const T*>(var)[c] + static_cast<T>(eps));
  }
  return p;
}

// ---------------------------------------------------------------------------------------
// NCHW: the unit is one (n, c) plane.

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

// ---------------------------------------------------------------------------------------
// channels_last: the unit is one image and a block of channels.

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

// ---------------------------------------------------------------------------------------
// Partial reductions, merged over n in a fixed order.

// Chan's merge of N equal-count (count, mean, M2) partials per channel; writes the mean
// and the biased variance. The partials and the merge are in double whatever T is: the
// backward's sum(da) = 0 identity rests on the mean, and an error of a few float ulps
// there shows up many times larger in the cancelling dbias/dweight sums.
template <typename T>
void merge_stats(int64_t N, int64_t C, int64_t count, const std::vector<double>& pmean,
                 const std::vector<double>& pm2, T* mean_out, T* var_out) {
  for (int64_t c = 0; c < C; ++c) {
    double mean = pmean[c];
    double m2 = pm2[c];
    for (int64_t n = 1; n < N; ++n) {
      const double delta = pmean[n * C + c] - mean;
      const double frac = 1.0 / static_cast<double>(n + 1);  // n_b / (n_a + n_b)
      mean += delta * frac;
      m2 += pm2[n * C + c] + delta * delta * static_cast<double>(count) * static_cast<double>(n) * frac;
    }
    mean_out[c] = static_cast<T>(mean);
    var_out[c] = static_cast<T>(m2 / static_cast<double>(N * count));
  }
}

// out[c * len + t] = sum_n part[(n * C + c) * len + t].
template <typename T>
void sum_over_batch(int64_t N, int64_t C, int64_t len, const std::vector<T>& part, T* out) {
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < len; ++t) {
      T s = part[c * len + t];
      for (int64_t n = 1; n < N; ++n) s += part[(n * C + c) * len + t];
      out[c * len + t] = s;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Forward.

template <typename scalar_t, Activation A>
void forward_eval_nchw(const ForwardParams& p) {
  using T = acc_type<scalar_t>;
  using Fn = Act<A, T>;
  constexpr int VL = kLanes<T>;
  const Geometry& g = p.g;
  const PlaneGeom<T> pg(g);
  const auto cp = channel_params<T>(g.channels, p.gamma, p.beta, p.mean_in, p.var_in, p.eps);
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* weight = static_cast<const scalar_t*>(p.weight);
  const auto* bias = static_cast<const scalar_t*>(p.bias);
  auto* y = static_cast<scalar_t*>(p.y);
  with_kernel_size<T>(pg.K, [&](auto kt) {
    parallel_units(
        g.batch * g.channels, [&] { return PlaneState<T>(pg, false); },
        [&](int64_t u, PlaneState<T>& st) {
          const int64_t n = u / g.channels, c = u % g.channels;
          load_and_convolve_plane<decltype(kt)::value>(g, pg, x, weight, bias, n, c, st);
          const T s = cp.gamma[c] * cp.rstd[c];
          const T t = cp.beta[c] - cp.mean[c] * s;
          scalar_t* yp = y + n * g.stride_n + c * g.stride_c;
          for (int i = 0; i < pg.H; ++i) {
            const T* hr = st.h.data() + i * pg.cols;
            const T* xr = st.in.data() + (i + pg.left) * pg.pitch + pg.left;
            T* out = st.row.data();
            for (int j = 0; j < pg.W; j += VL) vstore(out + j, vload(xr + j) + Fn::fwd(vload(hr + j)) * s + t);
            store_row(yp + i * g.stride_h, g.stride_w, out, pg.W);
          }
        });
  });
}

template <typename scalar_t, Activation A>
void forward_eval_cl(const ForwardParams& p) {
  using T = acc_type<scalar_t>;
  using V = Vec<T>;
  using Fn = Act<A, T>;
  constexpr int CB = TileGeom<T>::kCB;
  const Geometry& g = p.g;
  const TileGeom<T> tg(g);
  const auto cp = channel_params<T>(g.channels, p.gamma, p.beta, p.mean_in, p.var_in, p.eps);
  std::vector<T> s(g.channels), t(g.channels);
  for (int64_t c = 0; c < g.channels; ++c) {
    s[c] = cp.gamma[c] * cp.rstd[c];
    t[c] = cp.beta[c] - cp.mean[c] * s[c];
  }
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* weight = static_cast<const scalar_t*>(p.weight);
  const auto* bias = static_cast<const scalar_t*>(p.bias);
  auto* y = static_cast<scalar_t*>(p.y);
  const auto bias_t = per_channel<T>(bias, g.channels);
  with_kernel_size<T>(tg.K, [&](auto kt) {
    parallel_units(
        g.batch * tg.blocks, [&] { return TileState<T>(tg, false); },
        [&](int64_t u, TileState<T>& st) {
          const TileBlock b = tile_block(tg, g.channels, u);
          load_tile_inputs(g, tg, x, weight, bias_t, b, st);
          const V vs = channel_vec(s, b), vt = channel_vec(t, b);
          const int nc = b.nc;
          scalar_t* yp = y + b.n * g.stride_n + b.c0;
          // Row by row, so that h stays in L1 between the convolution and the epilogue.
          for (int i = 0; i < tg.H; ++i) {
            conv_tile_k<T, decltype(kt)::value>(tg, st.in.data() + i * tg.prow, st.w.data(), st.bias.data(),
                                                st.h.data(), 1);
            const T* xr = st.in.data() + ((i + tg.left) * tg.pw + tg.left) * CB;
            for (int j = 0; j < tg.W; ++j)
              store_lanes<T>(yp + i * g.stride_h + j * g.stride_w,
                          vload(xr + j * CB) + Fn::fwd(vload(st.h.data() + j * CB)) * vs + vt, nc);
          }
        });
  });
}

#if CMK_HAVE_AMX
// The band multiplies its zeros by the inputs beside each window, so an inf in x would
// make NaN where eager gives a number. A plane whose convolution is not all finite is
// recomputed by the exact float32 kernel (rare: only planes with non-finite inputs or
// overflow), so NaN and inf land where eager puts them.
struct AmxExactFallback {
  PlaneGeom<float> pg;
  Scratch<float> in, h;
  std::vector<float> w;
  explicit AmxExactFallback(const Geometry& g) : pg(g), in(pg.plane), h(static_cast<size_t>(pg.rows) * pg.cols),
                                                 w(static_cast<size_t>(pg.K) * pg.K) {}

  // h (row pitch hpitch) = the convolution of plane (n, c) without its bias.
  void convolve(const Geometry& g, const c10::BFloat16* x, const c10::BFloat16* weight, int64_t n, int64_t c,
                float* out, int64_t hpitch) {
    load_plane(g, x, n, c, in.data(), pg.pitch, pg.left);
    load_weights(weight, c, pg.K, w.data());
    conv_plane_k<float, 0>(pg, in.data(), w.data(), 0.0f, h.data());
    for (int i = 0; i < pg.H; ++i) std::memcpy(out + i * hpitch, h.data() + i * pg.cols, pg.W * sizeof(float));
  }
};

inline bool all_finite(const float* v, int64_t n) {
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __mmask16 bad = 0;
  for (int64_t j = 0; j < n; j += kAmxCols) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(v + j));
    bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);  // |a| >= inf, or NaN
  }
  return bad == 0;
}

// The lines of `rows` rows of `row_bytes` bytes, `pitch` elements apart, into the cache
// (for writing when `write`).
inline void prefetch_rows(const uint16_t* p, int64_t rows, int64_t pitch, int64_t row_bytes, bool write) {
  for (int64_t i = 0; i < rows; ++i) {
    const char* r = reinterpret_cast<const char*>(p + i * pitch);
    for (int64_t b = 0; b < row_bytes; b += 64) {
      if (write) {
        __builtin_prefetch(r + b, 1);
      } else {
        __builtin_prefetch(r + b, 0);
      }
    }
  }
}

// The per-thread state of the AMX passes: `planes` padded bf16 planes (with their shifted
// copies), their channels' band tiles, one plane's convolution, and the exact fallback.
struct AmxState {
  AmxTileConfig tiles;
  const AmxPlaneGeom& ag;
  Scratch<uint16_t> in, band, out;
  Scratch<float> h;
  AmxExactFallback exact;
  int64_t band_unit = -1;  // the channel (block) whose bands are built
  AmxState(const Geometry& g, const AmxPlaneGeom& geom, int planes, int64_t out_elems)
      : ag(geom),
        in(planes * ag.buffer_elems()),
        band(planes * ag.band_elems()),
        out(out_elems),
        h(ag.row_blocks * kAmxRows * ag.hpitch),
        exact(g) {}
  uint16_t* plane(int l) { return in.data() + l * ag.buffer_elems(); }
  const uint16_t* bands(int l) { return band.data() + l * ag.band_elems(); }
};

// Channel c, whose padded plane is st.plane(l): its convolution on the tiles (the exact
// kernel where that is not finite), then y = x + act(h + b) * s + t rounded to bf16 into
// `out` (row pitch `out_pitch`, W elements a row).
template <Activation A>
void finish_plane_amx(const ForwardParams& p, const ChannelParams<float>& cp, int64_t n, int64_t c, int l,
                      AmxState& st, uint16_t* out, int64_t out_pitch) {
  using Fn = Act<A, float>;
  using V = Vec<float>;
  static_assert(kLanes<float> == kAmxCols, "one float vector per block row");
  const AmxPlaneGeom& ag = st.ag;
  uint16_t* in = st.plane(l);
  ag.shift_copy(in);
  amx_conv_plane(ag, in, st.bands(l), st.h.data());
  if (!all_finite(st.h.data(), ag.row_blocks * kAmxRows * ag.hpitch))
    st.exact.convolve(p.g, static_cast<const c10::BFloat16*>(p.x), static_cast<const c10::BFloat16*>(p.weight), n, c,
                      st.h.data(), ag.hpitch);
  const float b = p.bias ? static_cast<float>(static_cast<const c10::BFloat16*>(p.bias)[c]) : 0.0f;
  const float s = cp.gamma[c] * cp.rstd[c];
  const float t = cp.beta[c] - cp.mean[c] * s;
  for (int i = 0; i < ag.H; ++i) {
    const float* hr = st.h.data() + i * ag.hpitch;
    const uint16_t* xr = in + (i + ag.left) * ag.pitch + ag.left;
    for (int j = 0; j < ag.W; j += kAmxCols) {
      const V xv = reinterpret_cast<V>(bf16x16_to_float(xr + j));
      const V y = xv + Fn::fwd(vload(hr + j) + b) * s + t;
      const int lanes = std::min(kAmxCols, ag.W - j);
      _mm256_mask_storeu_epi16(out + i * out_pitch + j, static_cast<__mmask16>((1u << lanes) - 1),
                               float_to_bf16x16(reinterpret_cast<__m512>(y)));
    }
  }
}

// What both layouts' AMX eval passes read: geometry, BN constants, the tensors as bf16 bits.
struct AmxEvalArgs {
  const Geometry& g;
  AmxPlaneGeom ag;
  ChannelParams<float> cp;
  const uint16_t* x;
  const uint16_t* weight;
  uint16_t* y;
  explicit AmxEvalArgs(const ForwardParams& p)
      : g(p.g),
        ag(p.g),
        cp(channel_params<float>(p.g.channels, p.gamma, p.beta, p.mean_in, p.var_in, p.eps)),
        x(static_cast<const uint16_t*>(p.x)),
        weight(static_cast<const uint16_t*>(p.weight)),
        y(static_cast<uint16_t*>(p.y)) {}
};

// bf16 NCHW eval on AMX tiles (amx_conv.h): the plane is copied as bf16 (no conversion),
// convolved into float32, finished by the same epilogue as the other levels and rounded
// once. Units run channel-major, so a thread builds each channel's band tiles once; the
// next unit's plane is prefetched, since channel-major units are not adjacent in memory
// and the hardware prefetcher does not see it coming.
template <Activation A>
void forward_eval_nchw_amx(const ForwardParams& p) {
  const AmxEvalArgs args(p);
  const auto& [g, ag, cp, x, weight, y] = args;
  const int64_t units = g.batch * g.channels;
  const int64_t row_bytes = ((g.width - 1) * g.stride_w + 1) * static_cast<int64_t>(sizeof(uint16_t));
  const bool dense_rows = g.stride_w == 1;
  parallel_units(
      units, [&] { return AmxState(g, ag, 1, dense_rows ? 0 : ag.hpitch * ag.H); },
      [&](int64_t u, AmxState& st) {
        const int64_t c = u / g.batch, n = u % g.batch;
        if (st.band_unit != c) {
          build_band(weight + c * ag.K * ag.K, ag.K, ag.chunks, st.band.data());
          st.band_unit = c;
        }
        const int64_t offset = n * g.stride_n + c * g.stride_c;
        for (int i = 0; i < ag.H; ++i)
          load_row(st.plane(0) + (i + ag.left) * ag.pitch + ag.left, x + offset + i * g.stride_h, ag.W, g.stride_w);
        if (u + 1 < units) {
          const int64_t next = ((u + 1) % g.batch) * g.stride_n + ((u + 1) / g.batch) * g.stride_c;
          prefetch_rows(x + next, g.height, g.stride_h, row_bytes, false);
          prefetch_rows(y + next, g.height, g.stride_h, row_bytes, true);
        }
        if (dense_rows) {
          finish_plane_amx<A>(p, cp, n, c, 0, st, y + offset, g.stride_h);
        } else {
          finish_plane_amx<A>(p, cp, n, c, 0, st, st.out.data(), ag.hpitch);
          for (int i = 0; i < ag.H; ++i)
            store_row(y + offset + i * g.stride_h, g.stride_w, st.out.data() + i * ag.hpitch, ag.W);
        }
      });
}

// bf16 channels_last eval on AMX tiles: the unit is 32 channels of one image (a 64-byte
// line of each pixel, so x and y move in whole lines). Its pixels are transposed, 16 x 16
// at a time, into 32 per-channel planes, each convolved and finished as in NCHW into a
// bf16 plane, and those transposed back into y. Units run channel-block-major, so a
// thread builds each block's bands once.
template <Activation A>
void forward_eval_cl_amx(const ForwardParams& p) {
  constexpr int CB = 2 * kAmxCols;  // channels per unit: two transposes wide
  const AmxEvalArgs args(p);
  const auto& [g, ag, cp, x, weight, y] = args;
  const int64_t blocks = (g.channels + CB - 1) / CB;
  const int64_t opitch = ag.hpitch;      // a result plane's row pitch (W rounded up to 16)
  const int64_t oplane = ag.H * opitch;  // elements of one result plane
  const Transpose16& transpose = Transpose16::get();
  parallel_units(
      g.batch * blocks, [&] { return AmxState(g, ag, CB, CB * oplane); },
      [&](int64_t u, AmxState& st) {
        const int64_t cb = u / g.batch, n = u % g.batch, c0 = cb * CB;
        const int nc = static_cast<int>(std::min<int64_t>(CB, g.channels - c0));
        if (st.band_unit != cb) {
          for (int l = 0; l < nc; ++l)
            build_band(weight + (c0 + l) * ag.K * ag.K, ag.K, ag.chunks, st.band.data() + l * ag.band_elems());
          st.band_unit = cb;
        }
        // Channels [16 h, 16 h + 16) of the unit: how many exist.
        const int half_nc[2] = {std::min(nc, kAmxCols), std::max(0, nc - kAmxCols)};
        const uint16_t* xb = x + n * g.stride_n + c0;
        // Pixels (i, j0 .. j0 + 15) x channels -> row i + left, columns j0 + left ... of each
        // plane; pixels past W come in as zeros, which is the padding there.
        for (int i = 0; i < ag.H; ++i) {
          for (int j0 = 0; j0 < ag.W; j0 += kAmxCols) {
            for (int h = 0; h < 2 && half_nc[h] > 0; ++h)
              transpose(xb + i * g.stride_h + j0 * g.stride_w + h * kAmxCols, g.stride_w,
                        std::min(kAmxCols, ag.W - j0), half_nc[h],
                        st.plane(h * kAmxCols) + (i + ag.left) * ag.pitch + ag.left + j0, ag.buffer_elems());
          }
        }
        for (int l = 0; l < nc; ++l)
          finish_plane_amx<A>(p, cp, n, c0 + l, l, st, st.out.data() + l * oplane, opitch);
        uint16_t* yb = y + n * g.stride_n + c0;
        const __mmask32 lanes = static_cast<__mmask32>((uint64_t(1) << nc) - 1);
        alignas(64) uint16_t block[2][kAmxCols * kAmxCols] = {};
        for (int i = 0; i < ag.H; ++i) {
          for (int j0 = 0; j0 < ag.W; j0 += kAmxCols) {
            // Channels x pixels -> pixels x channels, then the nc channels of each of the
            // pixels j0 .. min(j0 + 16, W) go to y as one 64-byte store.
            for (int h = 0; h < 2 && half_nc[h] > 0; ++h)
              transpose(st.out.data() + h * kAmxCols * oplane + i * opitch + j0, oplane, half_nc[h], kAmxCols,
                        block[h], kAmxCols);
            const int pixels = std::min(kAmxCols, ag.W - j0);
            for (int j = 0; j < pixels; ++j) {
              const __m512i v = _mm512_inserti64x4(
                  _mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(block[0] + j * kAmxCols))),
                  _mm256_load_si256(reinterpret_cast<const __m256i*>(block[1] + j * kAmxCols)), 1);
              _mm512_mask_storeu_epi16(yb + i * g.stride_h + (j0 + j) * g.stride_w, lanes, v);
            }
          }
        }
      });
}
#endif

template <typename scalar_t, Activation A>
void forward_train_nchw(const ForwardParams& p) {
  using T = acc_type<scalar_t>;
  using V = Vec<T>;
  using Fn = Act<A, T>;
  constexpr int VL = kLanes<T>;
  const Geometry& g = p.g;
  const PlaneGeom<T> pg(g);
  const int64_t units = g.batch * g.channels;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* weight = static_cast<const scalar_t*>(p.weight);
  const auto* bias = static_cast<const scalar_t*>(p.bias);
  auto* y = static_cast<scalar_t*>(p.y);
  auto* mean_out = static_cast<T*>(p.mean_out);
  auto* var_out = static_cast<T*>(p.var_out);
  const IVec<T> lanes = lane_index<T>();
  const int64_t count = int64_t(pg.H) * pg.W;
  std::vector<double> pmean(units), pm2(units);
  with_kernel_size<T>(pg.K, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    // Pass 1: per-plane mean and M2 of a (two passes over the plane's a, kept in h).
    parallel_units(
        units, [&] { return PlaneState<T>(pg, false); },
        [&](int64_t u, PlaneState<T>& st) {
          const int64_t n = u / g.channels, c = u % g.channels;
          load_and_convolve_plane<KT>(g, pg, x, weight, bias, n, c, st);
          // Rows are summed in T, rows into double (see merge_stats).
          double sum = 0;
          for (int i = 0; i < pg.H; ++i) {
            T* hr = st.h.data() + i * pg.cols;
            V row{};
            for (int j = 0; j < pg.W; j += VL) {
              const V a = Fn::fwd(vload(hr + j));
              const V am = (lanes + j) < pg.W ? a : V{};
              vstore(hr + j, am);
              row += am;
            }
            sum += hsum(row);
          }
          const double mean_d = sum / static_cast<double>(count);
          const T mean = static_cast<T>(mean_d);
          double m2 = 0;
          for (int i = 0; i < pg.H; ++i) {
            const T* hr = st.h.data() + i * pg.cols;
            V row{};
            for (int j = 0; j < pg.W; j += VL) {
              const V d = vload(hr + j) - mean;
              row += (lanes + j) < pg.W ? d * d : V{};
            }
            m2 += hsum(row);
          }
          // The deviations were taken about the rounded mean; shift M2 to the exact one.
          const double shift = mean_d - static_cast<double>(mean);
          pmean[u] = mean_d;
          pm2[u] = m2 - static_cast<double>(count) * shift * shift;
        });
    merge_stats(g.batch, g.channels, count, pmean, pm2, mean_out, var_out);
    if (p.stats_only) return;  // synchronized BN merges the statistics of all processes first
    const auto cp = channel_params<T>(g.channels, p.gamma, p.beta, mean_out, var_out, p.eps);
    // Pass 2: y = x + (a - mean) * rstd * gamma + beta.
    parallel_units(
        units, [&] { return PlaneState<T>(pg, false); },
        [&](int64_t u, PlaneState<T>& st) {
          const int64_t n = u / g.channels, c = u % g.channels;
          load_and_convolve_plane<KT>(g, pg, x, weight, bias, n, c, st);
          const T s = cp.gamma[c] * cp.rstd[c];
          const T mean = cp.mean[c], beta = cp.beta[c];
          scalar_t* yp = y + n * g.stride_n + c * g.stride_c;
          for (int i = 0; i < pg.H; ++i) {
            const T* hr = st.h.data() + i * pg.cols;
            const T* xr = st.in.data() + (i + pg.left) * pg.pitch + pg.left;
            T* out = st.row.data();
            for (int j = 0; j < pg.W; j += VL)
              vstore(out + j, vload(xr + j) + (Fn::fwd(vload(hr + j)) - mean) * s + beta);
            store_row(yp + i * g.stride_h, g.stride_w, out, pg.W);
          }
        });
  });
}

template <typename scalar_t, Activation A>
void forward_train_cl(const ForwardParams& p) {
  using T = acc_type<scalar_t>;
  using V = Vec<T>;
  using Fn = Act<A, T>;
  constexpr int CB = TileGeom<T>::kCB;
  const Geometry& g = p.g;
  const TileGeom<T> tg(g);
  const int64_t C = g.channels;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* weight = static_cast<const scalar_t*>(p.weight);
  const auto* bias = static_cast<const scalar_t*>(p.bias);
  auto* y = static_cast<scalar_t*>(p.y);
  auto* mean_out = static_cast<T*>(p.mean_out);
  auto* var_out = static_cast<T*>(p.var_out);
  const int64_t count = int64_t(tg.H) * tg.W;
  std::vector<double> pmean(g.batch * C), pm2(g.batch * C);
  const auto bias_t = per_channel<T>(bias, C);
  with_kernel_size<T>(tg.K, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    // Pass 1: per-(n, c) mean and M2 of a, one channel per lane.
    parallel_units(
        g.batch * tg.blocks, [&] { return TileState<T>(tg, false); },
        [&](int64_t u, TileState<T>& st) {
          const TileBlock b = tile_block(tg, C, u);
          load_tile_inputs(g, tg, x, weight, bias_t, b, st);
          conv_tile_k<T, KT>(tg, st.in.data(), st.w.data(), st.bias.data(), st.h.data());
          // Rows are summed in T, rows into double per channel (see merge_stats).
          double sum[CB] = {}, m2[CB] = {}, mean_d[CB];
          for (int i = 0; i < tg.H; ++i) {
            V row{};
            for (int j = 0; j < tg.W; ++j) {
              T* hp = st.h.data() + (int64_t(i) * tg.pixels + j) * CB;
              const V a = Fn::fwd(vload(hp));
              vstore(hp, a);
              row += a;
            }
            for (int l = 0; l < CB; ++l) sum[l] += row[l];
          }
          V mean{};
          for (int l = 0; l < CB; ++l) {
            mean_d[l] = sum[l] / static_cast<double>(count);
            mean[l] = static_cast<T>(mean_d[l]);
          }
          for (int i = 0; i < tg.H; ++i) {
            V row{};
            for (int j = 0; j < tg.W; ++j) {
              const V d = vload(st.h.data() + (int64_t(i) * tg.pixels + j) * CB) - mean;
              row += d * d;
            }
            for (int l = 0; l < CB; ++l) m2[l] += row[l];
          }
          for (int l = 0; l < b.nc; ++l) {
            // The deviations were taken about the rounded mean; shift M2 to the exact one.
            const double shift = mean_d[l] - static_cast<double>(mean[l]);
            pmean[b.n * C + b.c0 + l] = mean_d[l];
            pm2[b.n * C + b.c0 + l] = m2[l] - static_cast<double>(count) * shift * shift;
          }
        });
    merge_stats(g.batch, C, count, pmean, pm2, mean_out, var_out);
    if (p.stats_only) return;  // synchronized BN merges the statistics of all processes first
    const auto cp = channel_params<T>(C, p.gamma, p.beta, mean_out, var_out, p.eps);
    std::vector<T> s(C);
    for (int64_t c = 0; c < C; ++c) s[c] = cp.gamma[c] * cp.rstd[c];
    // Pass 2: y = x + (a - mean) * rstd * gamma + beta.
    parallel_units(
        g.batch * tg.blocks, [&] { return TileState<T>(tg, false); },
        [&](int64_t u, TileState<T>& st) {
          const TileBlock b = tile_block(tg, C, u);
          load_tile_inputs(g, tg, x, weight, bias_t, b, st);
          const V vs = channel_vec(s, b), vm = channel_vec(cp.mean, b), vb = channel_vec(cp.beta, b);
          const int nc = b.nc;
          scalar_t* yp = y + b.n * g.stride_n + b.c0;
          for (int i = 0; i < tg.H; ++i) {
            conv_tile_k<T, KT>(tg, st.in.data() + i * tg.prow, st.w.data(), st.bias.data(), st.h.data(), 1);
            const T* xr = st.in.data() + ((i + tg.left) * tg.pw + tg.left) * CB;
            for (int j = 0; j < tg.W; ++j)
              store_lanes<T>(yp + i * g.stride_h + j * g.stride_w,
                          vload(xr + j * CB) + (Fn::fwd(vload(st.h.data() + j * CB)) - vm) * vs + vb, nc);
          }
        });
  });
}

// ---------------------------------------------------------------------------------------
// Backward.
//
// Pass A (batch statistics only): per-(n, c) sums of dy and dy * xhat -> dbeta, dgamma.
// Pass B, fused per plane/tile: dh = da * act'(h) into the padded dh buffer, its sum
// (dbias) and correlation with x (dweight) as partials, then dx = dy + conv_transpose(dh).
// In eval mode da does not depend on dgamma/dbeta, so pass B also produces their partials.

template <typename T>
struct BackwardScratch {
  std::vector<T> sdy, sdyx, sdh, dw;
  BackwardScratch(int64_t units, int taps) : sdy(units), sdyx(units), sdh(units), dw(units * taps) {}
};

// da = k1 * (dy - k2 - xhat * k3); in eval mode k2 = k3 = 0.
template <typename T>
struct GradCoeffs {
  std::vector<T> k1, k2, k3;
};

template <typename T>
GradCoeffs<T> grad_coeffs(const ChannelParams<T>& cp, bool batch_stats, const T* dbeta, const T* dgamma,
                          int64_t M) {
  const int64_t C = static_cast<int64_t>(cp.gamma.size());
  GradCoeffs<T> k;
  k.k1.resize(C);
  k.k2.assign(C, T(0));
  k.k3.assign(C, T(0));
  for (int64_t c = 0; c < C; ++c) {
    k.k1[c] = cp.gamma[c] * cp.rstd[c];
    if (batch_stats) {
      k.k2[c] = dbeta[c] / static_cast<T>(M);
      k.k3[c] = dgamma[c] / static_cast<T>(M);
    }
  }
  return k;
}

// The coefficients of one backward call: from the local sums and count, or, in
// synchronized BN (p.sum_dy given), from the sums and the count over every process.
template <typename T>
GradCoeffs<T> call_grad_coeffs(const ChannelParams<T>& cp, const BackwardParams& p, const T* dbeta,
                               const T* dgamma, int64_t M) {
  if (p.sum_dy)
    return grad_coeffs(cp, true, static_cast<const T*>(p.sum_dy), static_cast<const T*>(p.sum_dy_xhat), p.count);
  return grad_coeffs(cp, p.batch_stats, dbeta, dgamma, M);
}

template <typename scalar_t, Activation A>
void backward_nchw(const BackwardParams& p) {
  using T = acc_type<scalar_t>;
  using V = Vec<T>;
  using Fn = Act<A, T>;
  constexpr int VL = kLanes<T>;
  const Geometry& g = p.g;
  const PlaneGeom<T> pg(g);
  const int64_t C = g.channels, units = g.batch * C;
  const int K = pg.K, taps = K * K, rp = K - 1 - pg.left;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* dy = static_cast<const scalar_t*>(p.dy);
  const auto* weight = static_cast<const scalar_t*>(p.weight);
  const auto* bias = static_cast<const scalar_t*>(p.bias);
  auto* dx = static_cast<scalar_t*>(p.dx);
  auto* dgamma = static_cast<T*>(p.dgamma);
  auto* dbeta = static_cast<T*>(p.dbeta);
  const auto cp = channel_params<T>(C, p.gamma, nullptr, p.mean, p.var, p.eps);
  const IVec<T> lanes = lane_index<T>();
  const int64_t M = g.batch * int64_t(pg.H) * pg.W;
  BackwardScratch<T> part(units, taps);

  // Loads x and dy and computes h for plane u.
  auto prologue = [&](int64_t u, PlaneState<T>& st, auto kt) {
    const int64_t n = u / C, c = u % C;
    load_plane(g, dy, n, c, st.dy.data(), pg.cols, 0);
    load_and_convolve_plane<decltype(kt)::value>(g, pg, x, weight, bias, n, c, st);
  };

  with_kernel_size<T>(K, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    if (p.batch_stats && p.sum_dy == nullptr) {
      parallel_units(
          units, [&] { return PlaneState<T>(pg, true); },
          [&](int64_t u, PlaneState<T>& st) {
            prologue(u, st, kt);
            const int64_t c = u % C;
            const T mean = cp.mean[c], rstd = cp.rstd[c];
            V sdy{}, sdyx{};
            for (int i = 0; i < pg.H; ++i) {
              const T* hr = st.h.data() + i * pg.cols;
              const T* dyr = st.dy.data() + i * pg.cols;
              for (int j = 0; j < pg.W; j += VL) {
                const V xhat = (Fn::fwd(vload(hr + j)) - mean) * rstd;
                const V d = vload(dyr + j);
                sdy += d;
                sdyx += (lanes + j) < pg.W ? d * xhat : V{};
              }
            }
            part.sdy[u] = hsum(sdy);
            part.sdyx[u] = hsum(sdyx);
          });
      sum_over_batch(g.batch, C, 1, part.sdy, dbeta);
      sum_over_batch(g.batch, C, 1, part.sdyx, dgamma);
    }
    if (p.sums_only) return;
    const auto kc = call_grad_coeffs(cp, p, dbeta, dgamma, M);
    parallel_units(
        units, [&] { return PlaneState<T>(pg, true); },
        [&](int64_t u, PlaneState<T>& st) {
          prologue(u, st, kt);
          const int64_t n = u / C, c = u % C;
          const T mean = cp.mean[c], rstd = cp.rstd[c];
          const T k1 = kc.k1[c], k2 = kc.k2[c], k3 = kc.k3[c];
          V sdy{}, sdyx{}, sdh{};
          for (int i = 0; i < pg.H; ++i) {
            const T* hr = st.h.data() + i * pg.cols;
            const T* dyr = st.dy.data() + i * pg.cols;
            T* dhr = st.dh_base + (i + rp) * pg.pitch + rp;
            for (int j = 0; j < pg.W; j += VL) {
              V d;
              const V a = Fn::fwd_grad(vload(hr + j), &d);
              const V xhat = (a - mean) * rstd;
              const V gy = vload(dyr + j);
              const auto valid = (lanes + j) < pg.W;
              // Lanes past W must store 0: the dh buffer's padding has to stay zero.
              const V dh = valid ? Fn::chain(d, k1 * (gy - k2 - xhat * k3)) : V{};
              vstore(dhr + j, dh);
              sdh += dh;
              sdy += gy;
              sdyx += valid ? gy * xhat : V{};
            }
          }
          part.sdh[u] = hsum(sdh);
          part.sdy[u] = hsum(sdy);
          part.sdyx[u] = hsum(sdyx);
          corr_plane<T, KT>(st.dh_base + rp * pg.pitch + rp, pg.pitch, st.in.data(), pg.pitch, pg.H, pg.cols, K,
                            part.dw.data() + u * taps);
          for (int t = 0; t < taps; ++t) st.wflip[t] = st.w[taps - 1 - t];
          conv_plane_k<T, KT>(pg, st.dh_base, st.wflip.data(), T(0), st.h.data());
          scalar_t* dxp = dx + n * g.stride_n + c * g.stride_c;
          for (int i = 0; i < pg.H; ++i) {
            const T* hr = st.h.data() + i * pg.cols;
            const T* dyr = st.dy.data() + i * pg.cols;
            T* out = st.row.data();
            for (int j = 0; j < pg.W; j += VL) vstore(out + j, vload(dyr + j) + vload(hr + j));
            store_row(dxp + i * g.stride_h, g.stride_w, out, pg.W);
          }
        });
  });
  if (p.sums_only) return;
  if (!p.batch_stats) {
    sum_over_batch(g.batch, C, 1, part.sdy, dbeta);
    sum_over_batch(g.batch, C, 1, part.sdyx, dgamma);
  }
  sum_over_batch(g.batch, C, 1, part.sdh, static_cast<T*>(p.dbias));
  sum_over_batch(g.batch, C, taps, part.dw, static_cast<T*>(p.dweight));
}

template <typename scalar_t, Activation A>
void backward_cl(const BackwardParams& p) {
  using T = acc_type<scalar_t>;
  using V = Vec<T>;
  using Fn = Act<A, T>;
  constexpr int CB = TileGeom<T>::kCB;
  const Geometry& g = p.g;
  const TileGeom<T> tg(g);
  const int64_t C = g.channels, units = g.batch * C;
  const int K = tg.K, taps = K * K, rp = K - 1 - tg.left;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* dy = static_cast<const scalar_t*>(p.dy);
  const auto* weight = static_cast<const scalar_t*>(p.weight);
  const auto* bias = static_cast<const scalar_t*>(p.bias);
  auto* dx = static_cast<scalar_t*>(p.dx);
  auto* dgamma = static_cast<T*>(p.dgamma);
  auto* dbeta = static_cast<T*>(p.dbeta);
  const auto cp = channel_params<T>(C, p.gamma, nullptr, p.mean, p.var, p.eps);
  const int64_t M = g.batch * int64_t(tg.H) * tg.W;
  BackwardScratch<T> part(units, taps);
  const auto bias_t = per_channel<T>(bias, C);

  // Loads x and dy and computes h for tile u.
  auto prologue = [&](const TileBlock& b, TileState<T>& st, auto kt) {
    load_tile(g, dy, b.n, b.c0, b.nc, st.dy.data(), tg.W, 0);
    load_tile_inputs(g, tg, x, weight, bias_t, b, st);
    conv_tile_k<T, decltype(kt)::value>(tg, st.in.data(), st.w.data(), st.bias.data(), st.h.data());
  };
  auto write_lanes = [&](std::vector<T>& dst, const TileBlock& b, const V& v) {
    for (int l = 0; l < b.nc; ++l) dst[b.n * C + b.c0 + l] = v[l];
  };

  with_kernel_size<T>(K, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    if (p.batch_stats && p.sum_dy == nullptr) {
      parallel_units(
          g.batch * tg.blocks, [&] { return TileState<T>(tg, true); },
          [&](int64_t u, TileState<T>& st) {
            const TileBlock b = tile_block(tg, C, u);
            prologue(b, st, kt);
            const V mean = channel_vec(cp.mean, b), rstd = channel_vec(cp.rstd, b);
            V sdy{}, sdyx{};
            for (int i = 0; i < tg.H; ++i) {
              for (int j = 0; j < tg.W; ++j) {
                const V xhat = (Fn::fwd(vload(st.h.data() + (int64_t(i) * tg.pixels + j) * CB)) - mean) * rstd;
                const V d = vload(st.dy.data() + (int64_t(i) * tg.W + j) * CB);
                sdy += d;
                sdyx += d * xhat;
              }
            }
            write_lanes(part.sdy, b, sdy);
            write_lanes(part.sdyx, b, sdyx);
          });
      sum_over_batch(g.batch, C, 1, part.sdy, dbeta);
      sum_over_batch(g.batch, C, 1, part.sdyx, dgamma);
    }
    if (p.sums_only) return;
    const auto kc = call_grad_coeffs(cp, p, dbeta, dgamma, M);
    parallel_units(
        g.batch * tg.blocks, [&] { return TileState<T>(tg, true); },
        [&](int64_t u, TileState<T>& st) {
          const TileBlock b = tile_block(tg, C, u);
          prologue(b, st, kt);
          const V mean = channel_vec(cp.mean, b), rstd = channel_vec(cp.rstd, b);
          const V k1 = channel_vec(kc.k1, b), k2 = channel_vec(kc.k2, b), k3 = channel_vec(kc.k3, b);
          V sdy{}, sdyx{}, sdh{};
          for (int i = 0; i < tg.H; ++i) {
            for (int j = 0; j < tg.W; ++j) {
              V d;
              const V a = Fn::fwd_grad(vload(st.h.data() + (int64_t(i) * tg.pixels + j) * CB), &d);
              const V xhat = (a - mean) * rstd;
              const V gy = vload(st.dy.data() + (int64_t(i) * tg.W + j) * CB);
              const V dh = Fn::chain(d, k1 * (gy - k2 - xhat * k3));
              vstore(st.dh.data() + ((i + rp) * tg.pw + j + rp) * CB, dh);
              sdh += dh;
              sdy += gy;
              sdyx += gy * xhat;
            }
          }
          write_lanes(part.sdh, b, sdh);
          write_lanes(part.sdy, b, sdy);
          write_lanes(part.sdyx, b, sdyx);
          corr_tile_cl<T, KT, TileGeom<T>::kCBV>(st.dh.data() + (rp * tg.pw + rp) * CB, tg.prow, st.in.data(),
                                                  tg.prow, tg.H, tg.W, K, st.dw.data());
          for (int l = 0; l < b.nc; ++l)
            for (int t = 0; t < taps; ++t) part.dw[(b.n * C + b.c0 + l) * taps + t] = st.dw.data()[t * CB + l];
          load_tile_weights(weight, b.c0, b.nc, K, true, st.wflip.data());
          conv_tile_k<T, KT>(tg, st.dh.data(), st.wflip.data(), st.zero.data(), st.h.data());
          for (int i = 0; i < tg.H; ++i) {
            for (int j = 0; j < tg.W; ++j) {
              T* hp = st.h.data() + (int64_t(i) * tg.pixels + j) * CB;
              vstore(hp, vload(hp) + vload(st.dy.data() + (int64_t(i) * tg.W + j) * CB));
            }
          }
          store_tile(g, dx, b.n, b.c0, b.nc, st.h.data(), tg.pixels);
        });
  });
  if (p.sums_only) return;
  if (!p.batch_stats) {
    sum_over_batch(g.batch, C, 1, part.sdy, dbeta);
    sum_over_batch(g.batch, C, 1, part.sdyx, dgamma);
  }
  sum_over_batch(g.batch, C, 1, part.sdh, static_cast<T*>(p.dbias));
  sum_over_batch(g.batch, C, taps, part.dw, static_cast<T*>(p.dweight));
}

// Runs the layout's kernel for the activation p.act.
template <typename P, typename Kernels>
void dispatch(const P& p, Kernels kernels) {
  with_activation(p.act, [&](auto a) {
    const auto [cl, nchw] = kernels(a);
    (p.g.channels_last() ? cl : nchw)(p);
  });
}

template <typename scalar_t>
void forward_eval(const ForwardParams& p) {
#if CMK_HAVE_AMX
  if constexpr (std::is_same<scalar_t, c10::BFloat16>::value) {
    return with_activation(p.act, [&](auto a) {
      constexpr Activation A = decltype(a)::value;
      (p.g.channels_last() ? forward_eval_cl_amx<A> : forward_eval_nchw_amx<A>)(p);
    });
  }
#endif
  dispatch(p, [](auto a) {
    constexpr Activation A = decltype(a)::value;
    return std::pair(&forward_eval_cl<scalar_t, A>, &forward_eval_nchw<scalar_t, A>);
  });
}

template <typename scalar_t>
void forward_train(const ForwardParams& p) {
  dispatch(p, [](auto a) {
    constexpr Activation A = decltype(a)::value;
    return std::pair(&forward_train_cl<scalar_t, A>, &forward_train_nchw<scalar_t, A>);
  });
}

template <typename scalar_t>
void backward(const BackwardParams& p) {
  dispatch(p, [](auto a) {
    constexpr Activation A = decltype(a)::value;
    return std::pair(&backward_cl<scalar_t, A>, &backward_nchw<scalar_t, A>);
  });
}

template <typename scalar_t>
constexpr Passes passes() {
  return {forward_eval<scalar_t>, forward_train<scalar_t>, backward<scalar_t>};
}

// The extensions this translation unit's flags let the compiler emit, which the CPU must
// have before dispatch.cpp may call into it.
constexpr uint32_t compiled_features() {
  uint32_t f = 0;
#ifdef __SSE3__
  f |= kSse3;
#endif
#ifdef __SSSE3__
  f |= kSsse3;
#endif
#ifdef __SSE4_1__
  f |= kSse41;
#endif
#ifdef __SSE4_2__
  f |= kSse42;
#endif
#ifdef __POPCNT__
  f |= kPopcnt;
#endif
#ifdef __AVX__
  f |= kAvx;
#endif
#ifdef __AVX2__
  f |= kAvx2;
#endif
#ifdef __FMA__
  f |= kFma;
#endif
#ifdef __F16C__
  f |= kF16c;
#endif
#ifdef __BMI__
  f |= kBmi;
#endif
#ifdef __BMI2__
  f |= kBmi2;
#endif
#ifdef __LZCNT__
  f |= kLzcnt;
#endif
#ifdef __MOVBE__
  f |= kMovbe;
#endif
#ifdef __AVX512F__
  f |= kAvx512F;
#endif
#ifdef __AVX512BW__
  f |= kAvx512Bw;
#endif
#ifdef __AVX512CD__
  f |= kAvx512Cd;
#endif
#ifdef __AVX512DQ__
  f |= kAvx512Dq;
#endif
#ifdef __AVX512VL__
  f |= kAvx512Vl;
#endif
#ifdef __AVX512BF16__
  f |= kAvx512Bf16;
#endif
#ifdef __AVX512FP16__
  f |= kAvx512Fp16;
#endif
#ifdef __AVX512VBMI__
  f |= kAvx512Vbmi;
#endif
#ifdef __AVX512VNNI__
  f |= kAvx512Vnni;
#endif
#ifdef __AMX_TILE__
  f |= kAmxTile;
#endif
#ifdef __AMX_BF16__
  f |= kAmxBf16;
#endif
  return f;
}

}  // namespace

#define CMK_STRINGIFY_(x) #x
#define CMK_STRINGIFY(x) CMK_STRINGIFY_(x)

// This level's entry points, constant-initialized; dispatch.cpp declares the same
// object in every compiled level's namespace and picks one.
extern const KernelTable kKernelTable;
const KernelTable kKernelTable = {
    CMK_STRINGIFY(CMK_CPU_CAPABILITY),
    compiled_features(),
    {passes<float>(), passes<double>(), passes<c10::BFloat16>(), passes<c10::Half>()},
};

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
