// The forward passes: eval (one pass) and training (statistics, then the normalized
// output), in both layouts.
//
// Included once per capability level, by mixer_block_cpu.cpp only: its contents sit in
// that translation unit's anonymous namespace.
#pragma once

#include "activations.h"
#include "partial_sums.h"
#include "plane_staging.h"
#include "tile_staging.h"

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {
namespace {

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

}  // namespace
}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
