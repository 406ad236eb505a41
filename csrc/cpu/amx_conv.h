// The depthwise convolution of one bfloat16 plane on AMX tiles (Sapphire Rapids and
// later), for the levels compiled with -mamx-tile -mamx-bf16.
//
// For one kernel row tr, a 16 x 16 block of outputs is the product of the 16 input rows
// it reads (i + tr, a 32-column bf16 window starting at the block's first column) with
// a banded Toeplitz matrix B_tr[kk][n] = w[tr][kk - n] (zero outside 0 <= kk - n < k):
// out[i][n] += sum_kk in[i + tr][n0 + kk] * B_tr[kk][n]. That is one TDPBF16PS (a
// 16 x 32 by 32 x 16 bf16 product accumulated in float32) per kernel row and block,
// about 16 cycles, where the two AVX-512 FMA ports take 8 k cycles for the same 256 k
// multiply-adds. The band wastes all but k / 32 of the tile unit's multiply-adds, which it
// can afford: about 512 bf16 multiply-adds a cycle against 32 float32 FMAs. Kernels wider than 17 columns need a second 32-column window (`chunks`).
//
// The products of bf16 values are exact in float32, so the result differs from the
// AVX-512 path only in the order of the float32 sums (and in that TDPBF16PS flushes
// denormal inputs and outputs, which bf16 data of a trained network does not have).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "../mixer_block_params.h"

#if !defined(__AMX_TILE__) || !defined(__AMX_BF16__)
#error "amx_conv.h needs -mamx-tile -mamx-bf16"
#endif

namespace convmixer_kernels {
namespace cpu {
namespace CMK_CPU_CAPABILITY {

constexpr int kAmxRows = 16;   // output rows of a block (tile rows)
constexpr int kAmxCols = 16;   // output columns of a block (16 float32 = one 64-byte tile row)
constexpr int kAmxDepth = 32;  // input columns of a window (32 bf16 = one 64-byte tile row)
constexpr int kAmxTileElems = kAmxRows * kAmxDepth;  // bf16 elements of one band tile
// Tile registers: 0-3 accumulate up to four blocks of a row, 4 holds the band, 5-7 the
// input windows (rotated so that a load need not wait for the previous product).
constexpr int kAmxAccTiles = 4;

// Where a bf16 plane and its convolution live for the tile kernels.
//
// A tile load whose 64-byte rows straddle cache lines runs at less than half speed, so
// every window must start on a 64-byte boundary: rows are a multiple of 32 elements
// long, and the windows of odd column blocks (which start 16 elements into a line) read
// a second copy of the plane shifted left by 16 elements.
struct AmxPlaneGeom {
  int H, W, K, left;
  int chunks;          // 32-column windows per block: 1 for k <= 17, else 2
  int row_blocks;      // ceil(H / 16)
  int col_blocks;      // ceil(W / 16)
  int64_t pitch;       // bf16 elements per padded input row, a multiple of 32
  int64_t prows;       // padded input rows
  int64_t plane;       // elements of one padded plane; the shifted copy follows it
  int64_t hpitch;      // float32 elements per output row (col_blocks * 16)

  explicit AmxPlaneGeom(const Geometry& g) {
    H = static_cast<int>(g.height);
    W = static_cast<int>(g.width);
    K = g.kernel_size;
    left = (K - 1) / 2;
    chunks = (kAmxCols + K - 1 + kAmxDepth - 1) / kAmxDepth;
    row_blocks = (H + kAmxRows - 1) / kAmxRows;
    col_blocks = (W + kAmxCols - 1) / kAmxCols;
    // The last block's last window ends at column (col_blocks - 1) * 16 + chunks * 32;
    // that also covers the W + k - 1 columns of the padded row (k - 1 <= chunks * 32 - 16).
    pitch = (static_cast<int64_t>(col_blocks - 1) * kAmxCols + chunks * kAmxDepth + kAmxDepth - 1) / kAmxDepth *
            kAmxDepth;
    prows = static_cast<int64_t>(row_blocks) * kAmxRows + K - 1;
    plane = prows * pitch;
    hpitch = static_cast<int64_t>(col_blocks) * kAmxCols;
  }
  int64_t band_elems() const { return static_cast<int64_t>(K) * chunks * kAmxTileElems; }
  int64_t buffer_elems() const { return (col_blocks > 1 ? 2 : 1) * plane; }

  // After the plane's rows are in place, the shifted copy for the odd column blocks.
  void shift_copy(uint16_t* in) const {
    if (col_blocks == 1) return;
    for (int i = 0; i < H; ++i) {
      const int64_t r = (i + left) * pitch;
      std::memcpy(in + plane + r, in + r + kAmxCols, (pitch - kAmxCols) * sizeof(uint16_t));
    }
  }
};

// The tile shapes above, loaded for the calling thread for its lifetime (the tile
// configuration is per-thread state), and the tile state released after.
class AmxTileConfig {
 public:
  AmxTileConfig() {
    struct alignas(64) {
      uint8_t palette = 1, start_row = 0;
      uint8_t reserved[14] = {};
      uint16_t colsb[16] = {};
      uint8_t rows[16] = {};
    } cfg;
    for (int t = 0; t < 8; ++t) {
      cfg.colsb[t] = 64;
      cfg.rows[t] = kAmxRows;
    }
    _tile_loadconfig(&cfg);
  }
  ~AmxTileConfig() { _tile_release(); }
  AmxTileConfig(const AmxTileConfig&) = delete;
  AmxTileConfig& operator=(const AmxTileConfig&) = delete;
};

// The k * chunks band tiles of one channel, in the tile unit's pair-interleaved layout
// for the second operand: element (kk, n) of a 32 x 16 matrix at [kk / 2][n][kk % 2],
// that is w[tr][c * 32 + kk - n]. w holds the channel's k x k taps as bf16 bit patterns.
// Built once per channel and thread, so it is vectorized: with the kernel row reversed
// into a zero-padded buffer, a tile row is two 32-element windows of it, interleaved.
inline void build_band(const uint16_t* w, int K, int chunks, uint16_t* band) {
  typedef uint16_t V32 __attribute__((vector_size(64)));
  constexpr int kOrigin = 96;  // rev[kOrigin - s] = w[tr][s]; windows stay inside [33, 128)
  alignas(64) uint16_t rev[160];
  const V32 interleave = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                          8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  for (int tr = 0; tr < K; ++tr) {
    std::memset(rev, 0, sizeof(rev));
    for (int s = 0; s < K; ++s) rev[kOrigin - s] = w[tr * K + s];
    for (int c = 0; c < chunks; ++c) {
      uint16_t* tile = band + (static_cast<int64_t>(tr) * chunks + c) * kAmxTileElems;
      for (int r = 0; r < kAmxDepth / 2; ++r) {
        const int o = c * kAmxDepth + 2 * r;  // kk = 2r: lane n needs w[tr][o - n] = rev[kOrigin - o + n]
        V32 even, odd;
        std::memcpy(&even, rev + kOrigin - o, sizeof(V32));
        std::memcpy(&odd, rev + kOrigin - o - 1, sizeof(V32));  // kk = 2r + 1
        const V32 row = __builtin_shuffle(even, odd, interleave);
        std::memcpy(tile + r * kAmxDepth, &row, sizeof(V32));
      }
    }
  }
}

namespace amx_detail {

// Accumulator T's window goes to tile 5, 6, 7, 5 (T = 0..3), so a load need not wait for
// the product that reads the previous window. GCC's tile intrinsics paste their register
// numbers into the assembly, hence literals.
template <int T>
inline void product(const uint16_t* win, int64_t stride) {
  if constexpr (T == 0) {
    _tile_loadd(5, win, stride);
    _tile_dpbf16ps(0, 5, 4);
  } else if constexpr (T == 1) {
    _tile_loadd(6, win, stride);
    _tile_dpbf16ps(1, 6, 4);
  } else if constexpr (T == 2) {
    _tile_loadd(7, win, stride);
    _tile_dpbf16ps(2, 7, 4);
  } else {
    _tile_loadd(5, win, stride);
    _tile_dpbf16ps(3, 5, 4);
  }
}

// NR x NC blocks starting at row block rb0 and column block cb0, one accumulator tile
// each: they start at zero, take one product per (kernel row, window) with the band in
// tile 4, and are stored to h. Four independent accumulators hide the product's latency
// (about three times its issue interval), so the tile unit stays busy.
template <int NR, int NC>
void conv_blocks(const AmxPlaneGeom& ag, const uint16_t* in, const uint16_t* band, float* h, int rb0, int cb0) {
  static_assert(NR >= 1 && NC >= 1 && NR * NC <= kAmxAccTiles, "one accumulator tile per block");
  constexpr int N = NR * NC;
  _tile_zero(0);
  if constexpr (N > 1) _tile_zero(1);
  if constexpr (N > 2) _tile_zero(2);
  if constexpr (N > 3) _tile_zero(3);
  const int64_t stride = ag.pitch * static_cast<int64_t>(sizeof(uint16_t));
  // Accumulator t = r * NC + cc reads input rows (rb0 + r) * 16 + tr ..., columns
  // (cb0 + cc) * 16 + 32 c ...
  auto win = [&](int t, int tr, int c) {
    const int cb = cb0 + t % NC;
    return in + (cb & 1) * ag.plane + (static_cast<int64_t>(rb0 + t / NC) * kAmxRows + tr) * ag.pitch +
           (cb & ~1) * kAmxCols + c * kAmxDepth;
  };
  for (int tr = 0; tr < ag.K; ++tr) {
    for (int c = 0; c < ag.chunks; ++c) {
      _tile_loadd(4, band + (static_cast<int64_t>(tr) * ag.chunks + c) * kAmxTileElems, 64);
      product<0>(win(0, tr, c), stride);
      if constexpr (N > 1) product<1>(win(1, tr, c), stride);
      if constexpr (N > 2) product<2>(win(2, tr, c), stride);
      if constexpr (N > 3) product<3>(win(3, tr, c), stride);
    }
  }
  const int64_t out_stride = ag.hpitch * static_cast<int64_t>(sizeof(float));
  auto out = [&](int t) {
    return h + static_cast<int64_t>(rb0 + t / NC) * kAmxRows * ag.hpitch + (cb0 + t % NC) * kAmxCols;
  };
  _tile_stored(0, out(0), out_stride);
  if constexpr (N > 1) _tile_stored(1, out(1), out_stride);
  if constexpr (N > 2) _tile_stored(2, out(2), out_stride);
  if constexpr (N > 3) _tile_stored(3, out(3), out_stride);
}

// The blocks of NR row blocks from rb0: four columns at a time, then the rest.
template <int NR>
void conv_row_group(const AmxPlaneGeom& ag, const uint16_t* in, const uint16_t* band, float* h, int rb0) {
  constexpr int kCols = kAmxAccTiles / NR;
  int cb = 0;
  for (; cb + kCols <= ag.col_blocks; cb += kCols) conv_blocks<NR, kCols>(ag, in, band, h, rb0, cb);
  const int rest = ag.col_blocks - cb;
  if constexpr (kCols > 3) {
    if (rest == 3) return conv_blocks<NR, 3>(ag, in, band, h, rb0, cb);
  }
  if constexpr (kCols > 2) {
    if (rest == 2) return conv_blocks<NR, 2>(ag, in, band, h, rb0, cb);
  }
  if (rest == 1) conv_blocks<NR, 1>(ag, in, band, h, rb0, cb);
}

}  // namespace amx_detail

// h[i][j] = sum_{tr, s} w[tr][s] * in[i + tr][j + s] for i < row_blocks * 16,
// j < col_blocks * 16, in float32, from a zero-padded bf16 plane (pitch ag.pitch, the
// plane's pixel (0, 0) at (left, left), 64-byte aligned, its shifted copy made) and the
// channel's band tiles. The calling
// thread must hold an AmxTileConfig. Narrow planes (up to two column blocks, such as
// ConvMixer's 32 x 32) take two row blocks at a time, so four accumulators are in flight.
inline void amx_conv_plane(const AmxPlaneGeom& ag, const uint16_t* in, const uint16_t* band, float* h) {
  int rb = 0;
  if (ag.col_blocks <= 2) {
    for (; rb + 2 <= ag.row_blocks; rb += 2) amx_detail::conv_row_group<2>(ag, in, band, h, rb);
  }
  for (; rb < ag.row_blocks; ++rb) amx_detail::conv_row_group<1>(ag, in, band, h, rb);
}

}  // namespace CMK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace convmixer_kernels
