// The backward pass (see Passes::backward in mixer_block_cpu.h) in both layouts.
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

}  // namespace
}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
