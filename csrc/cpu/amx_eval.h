// The amx level's bf16 eval forward on AMX tiles (amx_conv.h), in both layouts, with its
// exact float32 fallback for planes that are not all finite.
//
// Included once per capability level, by mixer_block_cpu.cpp only: its contents sit in
// that translation unit's anonymous namespace.
#pragma once

#include "amx_conv.h"
#include "amx_staging.h"
#include "forward_passes.h"

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {
namespace {

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

}  // namespace
}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
