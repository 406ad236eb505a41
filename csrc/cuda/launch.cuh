// Host side of the tile kernels: the tiling plan of a call, the shared-memory budget, and
// the dispatch from runtime k to the compiled (k, tile shape) instantiations.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "../mixer_block_params.h"
#include "mixer_block_cuda.h"
#include "platform.cuh"
#include "tile.cuh"

namespace convmixer_kernels {
namespace cuda {

// Kernel sizes compiled with k as a template constant; others take the generic path.
inline bool templated_k(int k) { return k == 3 || k == 5 || k == 7 || k == 9; }

enum class CfgId { kWide, kNarrow, kGeneric };

// How a call is cut into blocks; the same for every pass of the call, so workspace sizes
// computed before the launches match them.
struct Plan {
  CfgId cfg;
  int K;  // template kernel size, 0 for the generic path
  int CB, TH, TW;
  int tiles_h, tiles_w, items, num_cg, items_per_block, slices;
  // A pass that cannot launch on the device (no tile shape fits all of the call's passes):
  // its name and shared memory per block, against the most a block may have; else nullptr.
  const char* unfit_pass;
  size_t unfit_bytes, limit;
};

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

inline int multiprocessors() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    cudaGetLastError();  // leave no sticky error behind; plan for a mid-size GPU
    return 108;
  }
  return sms;
}

template <class Cfg>
void set_shape(Plan& p, CfgId id, const Geometry& g) {
  p.cfg = id;
  p.CB = Cfg::CB, p.TH = Cfg::TH, p.TW = Cfg::TW;
  p.tiles_h = ceil_div(g.height, p.TH);
  p.tiles_w = ceil_div(g.width, p.TW);
  p.items = static_cast<int>(g.batch * p.tiles_h * p.tiles_w);
  p.num_cg = ceil_div(g.channels, p.CB);
}

// The input tile of one conv of the call: rows, pitch and leading columns, for the
// generic path (templated k fixes them in the kernel: TH + k - 1, TW + 8, templated_co).
struct InTile {
  int pad, rows, pitch, co;
};

template <typename T>
InTile in_tile(const Plan& p, int k, int pad) {
  constexpr int V = vec_elems<T>();
  InTile t;
  t.pad = pad;
  t.rows = p.TH + k - 1;
  if (p.K) {
    t.pitch = p.TW + 8;
    t.co = templated_co<T>(k);
  } else {
    // columns before the output start at a vector boundary, so NCHW rows need no shift
    t.co = (pad + V - 1) / V * V;
    t.pitch = (t.co + p.TW + k - 1 - pad + V - 1) / V * V;
  }
  return t;
}

inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Whether strides in `g` are the dense ones of `layout` (dims of size 1 may have any).
inline bool dense_in(const Geometry& g, Layout layout) {
  const int64_t C = g.channels, H = g.height, W = g.width;
  int64_t sn, sc, sh, sw;
  if (layout == Layout::kNCHW) {
    sw = 1, sh = W, sc = H * W, sn = C * H * W;
  } else {
    sc = 1, sw = C, sh = W * C, sn = H * W * C;
  }
  return (g.batch <= 1 || g.stride_n == sn) && (C <= 1 || g.stride_c == sc) && (H <= 1 || g.stride_h == sh) &&
         (W <= 1 || g.stride_w == sw);
}

inline bool empty_problem(const Geometry& g) {
  return g.batch == 0 || g.channels == 0 || g.height == 0 || g.width == 0;
}

// Arguments common to every pass; the pass fills in its tensors.
template <typename T>
TileArgs base_args(const Plan& p, const Geometry& g, Layout layout, const InTile& t, Activation act, double eps) {
  TileArgs a{};
  a.N = static_cast<int>(g.batch);
  a.C = static_cast<int>(g.channels);
  a.H = static_cast<int>(g.height);
  a.W = static_cast<int>(g.width);
  a.k = g.kernel_size;
  a.pad = t.pad;
  a.rows = t.rows;
  a.pitch = t.pitch;
  a.co = t.co;
  a.nhwc = layout == Layout::kChannelsLast;
  a.tiles_h = p.tiles_h;
  a.tiles_w = p.tiles_w;
  a.items = p.items;
  a.items_per_block = p.items_per_block;
  a.act = act;
  a.eps = static_cast<float>(eps);
  return a;
}

// 16-byte global accesses need the contiguous dimension to be whole vectors and every
// activation-sized pointer of the pass 16-byte aligned.
template <typename T>
void set_vec(TileArgs& a) {
  constexpr int V = vec_elems<T>();
  const bool dims = a.nhwc ? a.C % V == 0 : a.W % V == 0;
  a.vec = dims && aligned16(a.in) && aligned16(a.aux) && aligned16(a.out);
}

// The opt-in to more than 48 KB of dynamic shared memory, once per kernel and device
// (cudaFuncSetAttribute costs microseconds; `opted_in` holds one bit per device, owned by
// the kernel's instantiation): the limit is raised to the device's maximum, so every later
// launch fits whatever its size (the generic path's depends on k) and no caller lowers
// it under another's launch. Devices past 63 take the call every time.
inline cudaError_t opt_in_smem(void (*kernel)(TileArgs), std::atomic<uint64_t>& opted_in) {
  int dev = 0, limit = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (opted_in.load(std::memory_order_acquire) & bit) return cudaSuccess;
  err = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
  if (err == cudaSuccess) opted_in.fetch_or(bit, std::memory_order_release);
  return err;
}

// The shared memory of the device a launch runs on.
struct SmemBudget {
  int per_sm, per_block, reserved;  // per multiprocessor, most per block (opted in), reserved per block
};

inline SmemBudget smem_budget() {
  SmemBudget b{0, 0, 0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&b.per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&b.per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&b.reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev) != cudaSuccess) {
    cudaGetLastError();  // leave no sticky error behind; plan for an A100 (sm_80)
    return {164 * 1024, 163 * 1024, 1024};
  }
  return b;
}

// Blocks per multiprocessor with `bytes` of dynamic shared memory each, up to the register
// budget (kMinBlocksPerSm); 0 if one block cannot have that much.
inline int blocks_per_sm(size_t bytes, const SmemBudget& b) {
  if (bytes > static_cast<size_t>(b.per_block)) return 0;
  return static_cast<int>(std::min<size_t>(kMinBlocksPerSm, b.per_sm / (bytes + b.reserved)));
}

// Calls f(std::integral_constant<int, K>{}, Cfg{}) with the compiled kernel size (0: the
// generic path) and tile shape of plan p.
template <class F>
decltype(auto) with_config(const Plan& p, F&& f) {
  const auto shape = [&](auto kc) -> decltype(auto) {
    return p.cfg == CfgId::kWide ? f(kc, CfgWide{}) : f(kc, CfgNarrow{});
  };
  switch (p.K) {
    case 3: return shape(std::integral_constant<int, 3>{});
    case 5: return shape(std::integral_constant<int, 5>{});
    case 7: return shape(std::integral_constant<int, 7>{});
    case 9: return shape(std::integral_constant<int, 9>{});
    default: return f(std::integral_constant<int, 0>{}, CfgGeneric{});
  }
}

// The dynamic shared memory of a pass of plan p with one buffer (`pad` zero columns
// before its input: the transposed conv of grad_x mirrors the forward's).
template <typename T, Mode MODE>
size_t pass_smem(const Plan& p, int k, int pad) {
  const InTile t = in_tile<T>(p, k, pad);
  return with_config(p, [&](auto kc, auto cfg) {
    return SmemLayout<T, decltype(kc)::value, decltype(cfg), MODE>(t.rows, t.pitch, k, 1).total;
  });
}

inline const char* call_name(Call call) {
  return call == Call::kForwardEval ? "eval forward" : call == Call::kForwardTrain ? "training forward" : "backward";
}

// The first pass of `call` that cannot launch on plan p's tiles even with one buffer (more
// shared memory than a block may have): p with unfit_pass and unfit_bytes set, else p.
template <typename T>
Plan check_fit(Plan p, int k, Call call, const SmemBudget& b) {
  const int left = (k - 1) / 2;
  struct Need {
    const char* pass;
    size_t bytes;
  };
  Need needs[3];
  int n = 0;
  if (call == Call::kForwardTrain) needs[n++] = {"stats", pass_smem<T, Mode::kStats>(p, k, left)};
  if (call != Call::kBackward) needs[n++] = {"apply", pass_smem<T, Mode::kApply>(p, k, left)};
  if (call == Call::kBackward) {
    needs[n++] = {"grad_sums", pass_smem<T, Mode::kGradSums>(p, k, left)};
    needs[n++] = {"grad_h", pass_smem<T, Mode::kGradH>(p, k, left)};
    needs[n++] = {"grad_x", pass_smem<T, Mode::kGradX>(p, k, k - 1 - left)};
  }
  p.unfit_pass = nullptr, p.unfit_bytes = 0, p.limit = static_cast<size_t>(b.per_block);
  for (int i = 0; i < n && !p.unfit_pass; ++i)
    if (blocks_per_sm(needs[i].bytes, b) == 0) p.unfit_pass = needs[i].pass, p.unfit_bytes = needs[i].bytes;
  return p;
}

// How a call is cut into blocks on a device of `sms` multiprocessors and shared memory `b`.
// The tile shape: 32 x 32 tiles of 8 channels where there are enough of them, else 16 x 16
// of 16; the other of the two where the first cannot launch one of the call's passes even
// with one buffer (float32's 32 x 32 grad_h pass needs up to 129 KB, past the 99 KB a block
// has on sm_86 and sm_89). The generic path has one shape: where it does not fit, the plan
// names the pass (unfit_pass), and the launchers refuse the call before launching anything.
template <typename T>
Plan plan_call(const Geometry& g, Call call, int sms, const SmemBudget& b) {
  Plan p{};
  const int k = g.kernel_size;
  p.K = templated_k(k) ? k : 0;
  if (!p.K) {
    set_shape<CfgGeneric>(p, CfgId::kGeneric, g);
    p = check_fit<T>(p, k, call, b);
  } else {
    set_shape<CfgWide>(p, CfgId::kWide, g);
    // Small images, or too few 32 x 32 tiles to give every multiprocessor two blocks
    // (batch 1): 16 x 16 tiles, four times as many blocks.
    Plan narrow = p;
    set_shape<CfgNarrow>(narrow, CfgId::kNarrow, g);
    const bool prefer_narrow = g.height <= 16 || g.width <= 16 || static_cast<int64_t>(p.items) * p.num_cg < 2LL * sms;
    const Plan first = check_fit<T>(prefer_narrow ? narrow : p, k, call, b);
    p = first.unfit_pass ? check_fit<T>(prefer_narrow ? p : narrow, k, call, b) : first;
    if (p.unfit_pass) p = first;  // neither fits: report the preferred shape's pass
  }
  // About 16 blocks per multiprocessor (8 waves of 2 resident blocks) so the last wave is
  // a small tail at any batch; up to 8 items per block amortize its setup (filters,
  // per-channel constants) at large batch. gridDim.y is limited to 65535.
  const int64_t target = 16LL * sms;
  const int64_t blocks_at_one = static_cast<int64_t>(p.items) * p.num_cg;
  p.items_per_block = static_cast<int>(std::min<int64_t>(8, std::max<int64_t>(1, (blocks_at_one + target - 1) / target)));
  p.items_per_block = std::max(p.items_per_block, ceil_div(p.items, 65535));
  p.slices = ceil_div(p.items, p.items_per_block);
  return p;
}

// The plan of a call on the current device; every launch of the call and the workspace
// size computed before them use it.
template <typename T>
Plan make_plan(const Geometry& g, Call call) {
  return plan_call<T>(g, call, multiprocessors(), smem_budget());
}

template <typename T>
std::string shared_memory_shortfall(const Geometry& g, Call call) {
  if (empty_problem(g)) return {};
  const Plan p = make_plan<T>(g, call);
  if (!p.unfit_pass) return {};
  return std::string("the ") + call_name(call) + "'s " + p.unfit_pass + " pass needs " + std::to_string(p.unfit_bytes) +
         " bytes of shared memory per block for " + Dtype<T>::kName + " at k = " + std::to_string(g.kernel_size) +
         " (tiles of " + std::to_string(p.TH) + " x " + std::to_string(p.TW) + " x " + std::to_string(p.CB) +
         " channels), more than the " + std::to_string(p.limit) + " bytes a block may have on this GPU";
}

template <typename T>
std::string shared_memory_shortfall(int kernel_size) {
  // one pixel: the shape decides only which tile shape the planner tries first
  const Geometry g{1, 1, 1, 1, 1, 1, 1, 1, kernel_size};
  std::string why = shared_memory_shortfall<T>(g, Call::kForwardTrain);
  return why.empty() ? shared_memory_shortfall<T>(g, Call::kBackward) : why;
}

// The pipeline's depth (tile.cuh): two buffers where a block has more than one item and
// they keep as many blocks per multiprocessor as one would, else one (plan_call has made
// sure that one fits). The largest, with bf16 32 x 32 tiles of 8 channels at k = 9: eval
// 45 -> 70 KB (two blocks on sm_80 and sm_90 alike); the backward's grad_out passes
// 45 -> 90 KB (two on sm_90, one buffer on sm_80); its grad_h pass 92 KB with one buffer
// keeps two blocks on sm_90 but 137 KB with two would not, so it keeps one there, while
// sm_80 fits only one block either way and takes two buffers.
template <typename T, int K, class Cfg, Mode MODE>
int pipeline_stages(const TileArgs& a, const SmemBudget& b) {
  if (a.items_per_block <= 1) return 1;  // nothing to overlap, and channels_last needs no landing buffer
  using Smem = SmemLayout<T, K, Cfg, MODE>;
  const int one = blocks_per_sm(Smem(a.rows, a.pitch, a.k, 1).total, b);
  const int two = blocks_per_sm(Smem(a.rows, a.pitch, a.k, 2).total, b);
  return two >= std::max(one, 1) ? 2 : 1;
}

template <typename T, int K, class Cfg, Mode MODE>
cudaError_t launch_tile(const TileArgs& args, const Plan& p, cudaStream_t stream) {
  auto kernel = tile_kernel<T, K, Cfg, MODE>;
  TileArgs a = args;
  a.stages = pipeline_stages<T, K, Cfg, MODE>(a, smem_budget());
  const size_t smem = SmemLayout<T, K, Cfg, MODE>(a.rows, a.pitch, a.k, a.stages).total;
  if (smem > 48 * 1024) {
    static std::atomic<uint64_t> opted_in{0};
    const cudaError_t err = opt_in_smem(kernel, opted_in);
    if (err != cudaSuccess) return err;
  }
  return launch_kernel(kernel, dim3(p.num_cg, p.slices), dim3(kThreads), smem, stream, a);
}

template <typename T, Mode MODE>
cudaError_t run_tile(const TileArgs& a, const Plan& p, cudaStream_t stream) {
  return with_config(p, [&](auto kc, auto cfg) {
    return launch_tile<T, decltype(kc)::value, decltype(cfg), MODE>(a, p, stream);
  });
}

// reduce.cu: the ordered second stage of every reduction.
// mean[c], var[c] (biased) from the Welford partials [slices][3][C] (count, mean, M2).
cudaError_t launch_welford_finalize(const float* partial, int slices, int C, float* mean, float* var,
                                    cudaStream_t stream);
// Sums of the partials [slices][Q][C] over slices; row q < q_split goes to
// dst_cq[c * q_split + q], row q >= q_split to dst_rows[q - q_split][c].
cudaError_t launch_sum_partials(const float* partial, int slices, int Q, int C, int q_split, float* dst_cq,
                                float* const (&dst_rows)[3], cudaStream_t stream);

}  // namespace cuda
}  // namespace convmixer_kernels
