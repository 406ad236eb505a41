// The emulator's scheduler: blocks one after another, each block's threads as fibers
// (ucontext) that switch only at barriers and warp collectives. See device.h for what is
// and is not modelled.
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "device.h"
#include "emulator.h"

namespace cuda_emu {
constexpr size_t kSmemGuard = 256;
}

// The dynamic shared memory the kernels declare as `extern __shared__ ... smem[]`, with a
// guard band after the largest size a launch may ask for.
namespace convmixer_kernels {
namespace cuda {
alignas(16) unsigned char smem[::cuda_emu::kMaxDynamicSmem + ::cuda_emu::kSmemGuard];
}  // namespace cuda
}  // namespace convmixer_kernels

namespace cuda_emu {
namespace {

constexpr size_t kStackBytes = 1 << 20;  // the kernels' register arrays live on it
constexpr unsigned char kGuardByte = 0xa5;
constexpr unsigned char kSmemPoison = 0xff;  // NaN in float32, float16 and bfloat16

enum class Wait { kNone, kBlock, kWarp };

// One cp.async in flight: where it goes, where from, and who issued it where.
struct Copy {
  uint32_t dst;
  const unsigned char* src;
  int bytes, src_bytes;
  const char* file;
  int line;
};

struct Fiber {
  ucontext_t ctx;
  dim3 idx;
  int tid = 0;
  bool done = false, aborted = false;
  Wait wait = Wait::kNone;
  uint64_t gen = 0;
  std::vector<Copy> open;                 // issued since the last commit_group
  std::deque<std::vector<Copy>> groups;  // committed, oldest first
};

// A barrier of the block or of one warp: who arrived, at which call, and its generation.
struct Barrier {
  int arrived = 0;
  uint64_t gen = 0;
  const char* op = "";
  const char* file = "";
  int line = 0;
};

struct Warp {
  Barrier bar;
  uint32_t data[32][6];  // what each lane contributes to the collective in progress
};

struct Block {
  dim3 grid, dim, idx;
  int threads = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier bar;
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
  // per 4-byte word of shared memory (every copy is whole, aligned words): 1 + the thread
  // whose cp.async to it is in flight, else 0; and how many words are in flight
  std::vector<uint16_t> in_flight;
  size_t words_in_flight = 0;
  const std::function<void()>* body = nullptr;
  Fiber* current = nullptr;
  ucontext_t scheduler;
  std::string error;
};

Options g_options;
std::mt19937_64 g_rng;
Block* g_block = nullptr;
std::vector<void*> g_stacks;
std::map<std::pair<int, const void*>, size_t> g_smem_optin;  // (device, kernel) -> bytes
uint64_t g_attribute_calls = 0;
cudaError_t g_last_error = cudaSuccess;
std::string g_message;

std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  return buf;
}

cudaError_t record(cudaError_t err, const std::string& message) {
  if (g_last_error == cudaSuccess) {
    g_last_error = err;
    g_message = message;
  }
  return err;
}

Block& block() {
  if (!g_block || !g_block->current) {
    std::fprintf(stderr, "cuda_emulator: a device function was called outside a kernel\n");
    std::abort();
  }
  return *g_block;
}

// Ends the calling thread's part in the launch with an error; it is never resumed.
[[noreturn]] void fail(const std::string& what) {
  Block& b = block();
  Fiber& f = *b.current;
  if (b.error.empty())
    b.error = format("%s (block (%u, %u, %u), thread %d)", what.c_str(), b.idx.x, b.idx.y, b.idx.z, f.tid);
  f.aborted = true;
  swapcontext(&f.ctx, &b.scheduler);
  std::abort();
}

// Arrives at `bar` with `members` participants; returns once all have arrived at this
// same call (op, file, line).
void arrive(Barrier& bar, int members, Wait kind, const char* op, const char* file, int line) {
  Block& b = block();
  Fiber& f = *b.current;
  if (bar.arrived == 0) {
    bar.op = op, bar.file = file, bar.line = line;
  } else if (std::strcmp(bar.op, op) != 0 || bar.line != line || std::strcmp(bar.file, file) != 0) {
    fail(format("%s at %s:%d while other threads of the %s wait at %s at %s:%d", op, file, line,
                kind == Wait::kBlock ? "block" : "warp", bar.op, bar.file, bar.line));
  }
  if (++bar.arrived == members) {
    bar.arrived = 0;
    ++bar.gen;
    return;
  }
  f.wait = kind;
  f.gen = bar.gen;
  swapcontext(&f.ctx, &b.scheduler);
}

Warp& my_warp(int* lane) {
  Block& b = block();
  *lane = b.current->tid & 31;
  return b.warps[b.current->tid >> 5];
}

void warp_arrive(const char* op, const char* file, int line) {
  int lane;
  Warp& w = my_warp(&lane);
  arrive(w.bar, 32, Wait::kWarp, op, file, line);
}

void check_full_mask(unsigned mask, const char* op) {
  if (mask != 0xffffffffu) fail(format("%s with mask %#x: the emulator runs full-warp collectives only", op, mask));
}

bool runnable(const Block& b, const Fiber& f) {
  if (f.done || f.aborted) return false;
  switch (f.wait) {
    case Wait::kBlock: return b.bar.gen != f.gen;
    case Wait::kWarp: return b.warps[f.tid >> 5].bar.gen != f.gen;
    default: return true;
  }
}

void fiber_main() {
  Block& b = *g_block;
  (*b.body)();
  b.current->done = true;
  swapcontext(&b.current->ctx, &b.scheduler);
}

// 0, 1, ..., v.size() - 1 in the order of the options (a new shuffle on every call): the
// order of a block's threads in each round, and of a grid's blocks.
template <typename I>
void arrange(std::vector<I>& v) {
  std::iota(v.begin(), v.end(), I{0});
  if (g_options.order == kOrderDescending) std::reverse(v.begin(), v.end());
  if (g_options.order == kOrderShuffled) std::shuffle(v.begin(), v.end(), g_rng);
}

// Why no thread can go on: the first barrier someone waits at, and who is missing.
std::string deadlock(const Block& b) {
  int exited = 0;
  for (const Fiber& f : b.fibers) exited += f.done;
  for (const Fiber& f : b.fibers) {
    if (f.wait == Wait::kBlock)
      return format("%s at %s:%d reached by %d of %d threads (%d exited)", b.bar.op, b.bar.file, b.bar.line,
                    b.bar.arrived, b.threads, exited);
    if (f.wait == Wait::kWarp) {
      const Barrier& w = b.warps[f.tid >> 5].bar;
      return format("%s at %s:%d reached by %d of 32 lanes of warp %d (%d threads of the block exited)", w.op,
                    w.file, w.line, w.arrived, f.tid >> 5, exited);
    }
  }
  return "no thread can run";
}

// Runs one block to completion; returns the error text, empty on success.
std::string run_block(Block& b) {
  std::memset(b.smem, kSmemPoison, b.smem_bytes);
  std::memset(b.smem + b.smem_bytes, kGuardByte, kSmemGuard);
  b.in_flight.assign((b.smem_bytes + 3) / 4, 0);
  b.words_in_flight = 0;
  b.bar = Barrier{};
  for (Warp& w : b.warps) w.bar = Barrier{};
  b.error.clear();
  for (int t = 0; t < b.threads; ++t) {
    Fiber& f = b.fibers[t];
    f.tid = t;
    f.idx = dim3(t % b.dim.x, (t / b.dim.x) % b.dim.y, t / (b.dim.x * b.dim.y));
    f.done = f.aborted = false;
    f.wait = Wait::kNone;
    f.open.clear();
    f.groups.clear();
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = g_stacks[t];
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
  }
  std::vector<int> order(b.threads);
  for (;;) {
    arrange(order);
    bool ran = false, all_done = true;
    for (int t : order) {
      Fiber& f = b.fibers[t];
      if (!f.done) all_done = false;
      if (!runnable(b, f)) continue;
      f.wait = Wait::kNone;
      b.current = &f;
      ran = true;
      swapcontext(&b.scheduler, &f.ctx);
      b.current = nullptr;
      if (!b.error.empty()) return b.error;
    }
    if (all_done) break;
    if (!ran) return format("deadlock in block (%u, %u, %u): %s", b.idx.x, b.idx.y, b.idx.z, deadlock(b).c_str());
  }
  for (const Fiber& f : b.fibers) {
    const Copy* left = !f.open.empty() ? &f.open.front() : !f.groups.empty() ? &f.groups.front().front() : nullptr;
    if (left)
      return format("block (%u, %u, %u), thread %d ended with cp.async copies it never waited for (the first "
                    "issued at %s:%d)",
                    b.idx.x, b.idx.y, b.idx.z, f.tid, left->file, left->line);
  }
  for (size_t i = 0; i < kSmemGuard; ++i)
    if (b.smem[b.smem_bytes + i] != kGuardByte)
      return format("block (%u, %u, %u) wrote past the end of its %zu bytes of dynamic shared memory (at byte "
                    "%zu)",
                    b.idx.x, b.idx.y, b.idx.z, b.smem_bytes, b.smem_bytes + i);
  return "";
}

}  // namespace

// ---------------------------------------------------------------- configuration (emulator.h)

void configure(const Options& options) {
  g_options = options;
  g_rng.seed(options.seed);
  g_last_error = cudaSuccess;
  g_message.clear();
}

std::string take_message() {
  std::string message;
  message.swap(g_message);
  g_last_error = cudaSuccess;
  return message;
}

// ---------------------------------------------------------------- device.h

int device() { return g_options.device; }
int multiprocessors() { return g_options.multiprocessors; }
size_t smem_per_multiprocessor() { return g_options.smem_per_multiprocessor; }
size_t smem_per_block_optin() { return std::min(g_options.smem_per_block_optin, kMaxDynamicSmem); }

cudaError_t take_last_error() {
  const cudaError_t err = g_last_error;
  g_last_error = cudaSuccess;
  return err;
}

uint64_t attribute_calls() { return g_attribute_calls; }

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
  ++g_attribute_calls;
  if (bytes < 0 || static_cast<size_t>(bytes) > smem_per_block_optin())
    return record(cudaErrorInvalidValue, format("cudaFuncSetAttribute: %d bytes of dynamic shared memory, the "
                                                "device allows %zu",
                                                bytes, smem_per_block_optin()));
  g_smem_optin[{g_options.device, kernel}] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

cudaError_t run_grid(const void* kernel, dim3 grid, dim3 dim, size_t smem, const std::function<void()>& body) {
  const uint64_t threads = static_cast<uint64_t>(dim.x) * dim.y * dim.z;
  if (threads == 0 || threads > 1024 || dim.z > 64)
    return record(cudaErrorInvalidConfiguration, format("launch: block of %u x %u x %u threads", dim.x, dim.y, dim.z));
  if (threads % 32 != 0)
    return record(cudaErrorInvalidConfiguration,
                  format("launch: %llu threads per block; the emulator runs whole warps only",
                         static_cast<unsigned long long>(threads)));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return record(cudaErrorInvalidConfiguration, format("launch: grid of %u x %u x %u blocks", grid.x, grid.y, grid.z));
  const auto optin = g_smem_optin.find({g_options.device, kernel});
  const size_t allowed = optin == g_smem_optin.end() ? kDefaultDynamicSmem : std::max(kDefaultDynamicSmem, optin->second);
  if (smem > allowed)
    return record(cudaErrorInvalidValue,
                  format("launch: %zu bytes of dynamic shared memory, the kernel may use %zu (raise it with "
                         "cudaFuncSetAttribute, up to %zu)",
                         smem, allowed, smem_per_block_optin()));

  while (g_stacks.size() < threads) {
    void* stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED) return record(cudaErrorLaunchFailure, "cuda_emulator: out of memory for thread stacks");
    g_stacks.push_back(stack);
  }
  Block b;
  b.grid = grid;
  b.dim = dim;
  b.threads = static_cast<int>(threads);
  b.fibers.resize(threads);
  b.warps.resize(threads / 32);
  b.smem = convmixer_kernels::cuda::smem;
  b.smem_bytes = smem;
  b.body = &body;

  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> block_order(blocks);
  arrange(block_order);

  Block* const outer = g_block;
  g_block = &b;
  std::string error;
  for (const uint64_t i : block_order) {
    b.idx = dim3(static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                 static_cast<unsigned>(i / (static_cast<uint64_t>(grid.x) * grid.y)));
    error = run_block(b);
    if (!error.empty()) break;
  }
  g_block = outer;
  if (!error.empty()) return record(cudaErrorLaunchFailure, error);
  return cudaSuccess;
}

const dim3& thread_idx() { return block().current->idx; }
const dim3& block_idx() { return block().idx; }
const dim3& block_dim() { return block().dim; }
const dim3& grid_dim() { return block().grid; }

uint32_t shared_offset(const void* p) {
  Block& b = block();
  const auto* q = static_cast<const unsigned char*>(p);
  if (q < b.smem || q >= b.smem + b.smem_bytes)
    fail(format("shared-memory address %p outside the block's %zu bytes", p, b.smem_bytes));
  return static_cast<uint32_t>(q - b.smem);
}

namespace {

// Fails if a cp.async to any of the `bytes` at shared offset `off` is in flight.
void check_not_in_flight(const char* what, const char* file, int line, uint32_t off, size_t bytes) {
  Block& b = block();
  if (b.words_in_flight == 0) return;
  for (size_t w = off / 4; w < (off + bytes + 3) / 4; ++w) {
    if (!b.in_flight[w]) continue;
    const Fiber& owner = b.fibers[b.in_flight[w] - 1];
    const Copy* copy = nullptr;
    auto find = [&](const std::vector<Copy>& copies) {
      for (const Copy& c : copies)
        if (c.dst <= 4 * w && 4 * w < c.dst + c.bytes) copy = &c;
    };
    find(owner.open);
    for (const auto& group : owner.groups) find(group);
    fail(format("%s at %s:%d of shared-memory byte %zu, the destination of a cp.async of thread %d (issued at "
                "%s:%d) not yet waited for",
                what, file, line, 4 * w, owner.tid, copy ? copy->file : "?", copy ? copy->line : 0));
  }
}

void perform(const Copy& c) {
  Block& b = block();
  std::memcpy(b.smem + c.dst, c.src, c.src_bytes);
  std::memset(b.smem + c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
  for (uint32_t w = c.dst / 4; w < (c.dst + c.bytes) / 4; ++w) b.in_flight[w] = 0;
  b.words_in_flight -= c.bytes / 4;
}

}  // namespace

void shared_read(const char* file, int line, const void* p, size_t bytes) {
  Block& b = block();
  const auto* q = static_cast<const unsigned char*>(p);
  if (q < b.smem || q + bytes > b.smem + b.smem_bytes)
    fail(format("shared-memory read at %s:%d of %zu bytes at %p, outside the block's %zu bytes", file, line, bytes,
                p, b.smem_bytes));
  check_not_in_flight("shared-memory read", file, line, static_cast<uint32_t>(q - b.smem), bytes);
}

void cp_async(const char* file, int line, void* dst, const void* src, int bytes, int src_bytes, bool cg) {
  Block& b = block();
  const auto* q = static_cast<const unsigned char*>(dst);
  if ((bytes != 4 && bytes != 8 && bytes != 16) || (cg && bytes != 16) || src_bytes < 0 || src_bytes > bytes)
    fail(format("cp.async.%s at %s:%d of %d bytes with src-size %d", cg ? "cg" : "ca", file, line, bytes, src_bytes));
  if (q < b.smem || q + bytes > b.smem + b.smem_bytes)
    fail(format("cp.async at %s:%d to %d bytes at %p, outside the block's %zu bytes of shared memory", file, line,
                bytes, dst, b.smem_bytes));
  const uint32_t off = static_cast<uint32_t>(q - b.smem);
  if (off % bytes != 0 || reinterpret_cast<uintptr_t>(src) % bytes != 0)
    fail(format("cp.async at %s:%d of %d bytes from %p to shared byte %u: both must be %d-byte aligned", file, line,
                bytes, src, off, bytes));
  check_not_in_flight("cp.async", file, line, off, bytes);
  std::memset(b.smem + off, kSmemPoison, bytes);  // undefined until the copy is waited for
  for (uint32_t w = off / 4; w < (off + bytes) / 4; ++w) b.in_flight[w] = static_cast<uint16_t>(b.current->tid + 1);
  b.words_in_flight += bytes / 4;
  b.current->open.push_back(Copy{off, static_cast<const unsigned char*>(src), bytes, src_bytes, file, line});
}

void cp_async_commit() {
  Fiber& f = *block().current;
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}

void cp_async_wait(int groups) {
  Fiber& f = *block().current;
  if (groups < 0) {
    cp_async_commit();
    groups = 0;
  }
  while (f.groups.size() > static_cast<size_t>(groups)) {
    for (const Copy& c : f.groups.front()) perform(c);
    f.groups.pop_front();
  }
}

void syncthreads(const char* file, int line) {
  Block& b = block();
  arrive(b.bar, b.threads, Wait::kBlock, "__syncthreads", file, line);
}

void syncwarp(const char* file, int line, unsigned mask) {
  check_full_mask(mask, "__syncwarp");
  warp_arrive("__syncwarp", file, line);
}

uint32_t shfl_xor_bits(const char* file, int line, unsigned mask, uint32_t v, int lane_mask, int width) {
  check_full_mask(mask, "__shfl_xor_sync");
  if (width != 32 || lane_mask < 0 || lane_mask > 31) fail(format("__shfl_xor_sync: lane mask %d, width %d", lane_mask, width));
  int lane;
  Warp& w = my_warp(&lane);
  w.data[lane][0] = v;
  warp_arrive("__shfl_xor_sync", file, line);
  const uint32_t r = w.data[lane ^ lane_mask][0];
  warp_arrive("__shfl_xor_sync (read)", file, line);
  return r;
}

bool any_sync(const char* file, int line, unsigned mask, bool pred) {
  check_full_mask(mask, "__any_sync");
  int lane;
  Warp& w = my_warp(&lane);
  w.data[lane][0] = pred;
  warp_arrive("__any_sync", file, line);
  bool any = false;
  for (int l = 0; l < 32; ++l) any |= w.data[l][0] != 0;
  warp_arrive("__any_sync (read)", file, line);
  return any;
}

// ldmatrix.sync.aligned.m8n8.xN.shared.b16: lanes 8m .. 8m + 7 give the addresses of the
// 8 rows (16 bytes each) of matrix m; lane l receives, in register m, the 32 bits at
// row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of matrix m (PTX ISA, "Warp-level matrix
// load instruction: ldmatrix").
void ldmatrix(const char* file, int line, int matrices, uint32_t* r, uint32_t addr) {
  Block& b = block();
  int lane;
  Warp& w = my_warp(&lane);
  w.data[lane][0] = addr;
  warp_arrive("ldmatrix", file, line);
  for (int m = 0; m < matrices; ++m) {
    const uint32_t row = w.data[8 * m + lane / 4][0];
    if (row % 16 != 0 || row + 16 > b.smem_bytes)
      fail(format("ldmatrix: row address %u (from lane %d) is not a 16-byte aligned row inside the %zu bytes of "
                  "shared memory",
                  row, 8 * m + lane / 4, b.smem_bytes));
    check_not_in_flight("ldmatrix", file, line, row, 16);
    std::memcpy(&r[m], b.smem + row + 4 * (lane % 4), 4);
  }
  warp_arrive("ldmatrix (read)", file, line);
}

namespace {
float half_bits_to_float(uint32_t word, int half, bool bf16) {
  const uint16_t h = static_cast<uint16_t>(half ? word >> 16 : word & 0xffffu);
  return bf16 ? __bfloat162float(__ushort_as_bfloat16(h)) : __half2float(__ushort_as_half(h));
}
}  // namespace

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 with the fragment
// layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type"),
// g = lane / 4, t = lane % 4:
//   A (16 x 16): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9],
//                a[3] = A[g+8][2t+8, 2t+9] (lower half: lower column)
//   B (16 x 8):  b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]
//   C, D:        d[0], d[1] = D[g][2t, 2t+1], d[2], d[3] = D[g+8][2t, 2t+1]
void mma_m16n8k16(const char* file, int line, bool bf16, float* d, const uint32_t* a, const uint32_t* bfrag) {
  int lane;
  Warp& w = my_warp(&lane);
  for (int i = 0; i < 4; ++i) w.data[lane][i] = a[i];
  w.data[lane][4] = bfrag[0];
  w.data[lane][5] = bfrag[1];
  warp_arrive("mma.sync.m16n8k16", file, line);
  const int g = lane / 4, t = lane % 4;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
    float s = 0.0f;
    for (int k = 0; k < 16; ++k) {
      const int kq = (k & 7) / 2, hi = k >= 8, half = k & 1;
      const float av = half_bits_to_float(w.data[(row & 7) * 4 + kq][(row >= 8) + 2 * hi], half, bf16);
      const float bv = half_bits_to_float(w.data[col * 4 + kq][4 + hi], half, bf16);
      s += av * bv;  // exact: a product of two 16-bit values fits in a float
    }
    out[e] = d[e] + s;
  }
  warp_arrive("mma.sync.m16n8k16 (read)", file, line);
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

}  // namespace cuda_emu

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
