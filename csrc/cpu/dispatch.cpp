// Picks the CPU kernels' capability level once, at load time, from what this CPU (and
// its OS) supports. Compiled with no ISA flags, like the bindings: nothing here may use
// an instruction the oldest x86-64 lacks.
//
// The compiled levels are named by setup.py (-DCMK_CPU_LEVEL_<NAME>); the baseline
// level is always there. CONVMIXER_KERNELS_CPU_CAPABILITY=<level> forces one.
#include "mixer_block_cpu.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace convmixer_kernels {
namespace cpu {

#define CMK_DECLARE_LEVEL(level) \
  namespace level {              \
  extern const KernelTable kKernelTable;  \
  }
CMK_DECLARE_LEVEL(baseline)
#ifdef CMK_CPU_LEVEL_AVX2
CMK_DECLARE_LEVEL(avx2)
#endif
#ifdef CMK_CPU_LEVEL_AVX512
CMK_DECLARE_LEVEL(avx512)
#endif
#ifdef CMK_CPU_LEVEL_AVX512_BF16
CMK_DECLARE_LEVEL(avx512_bf16)
#endif
#ifdef CMK_CPU_LEVEL_AMX
CMK_DECLARE_LEVEL(amx)
#endif
#ifdef CMK_CPU_LEVEL_CUSTOM
CMK_DECLARE_LEVEL(custom)
#endif
#undef CMK_DECLARE_LEVEL

namespace {

// Best first: the first level this CPU can run is the default.
const KernelTable* const kLevels[] = {
#ifdef CMK_CPU_LEVEL_CUSTOM
    &custom::kKernelTable,
#endif
#ifdef CMK_CPU_LEVEL_AMX
    &amx::kKernelTable,
#endif
#ifdef CMK_CPU_LEVEL_AVX512_BF16
    &avx512_bf16::kKernelTable,
#endif
#ifdef CMK_CPU_LEVEL_AVX512
    &avx512::kKernelTable,
#endif
#ifdef CMK_CPU_LEVEL_AVX2
    &avx2::kKernelTable,
#endif
    &baseline::kKernelTable,
};

#if defined(__x86_64__) || defined(__i386__)
bool bit(uint32_t reg, int b) { return (reg >> b) & 1u; }

// The OS must save the vector registers across context switches (XCR0), or the
// instructions fault even where cpuid lists them.
uint64_t xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// AMX tiles need XCR0's tile-config and tile-data state (bits 17, 18) and, on Linux, the
// process's permission to use the 8 KB tile-data state, asked for once (ARCH_REQ_XCOMP_PERM,
// Linux 5.16+). Without it the first tile instruction faults, so no permission means no
// AMX level, not a crash.
bool amx_permitted() {
  if ((xcr0() & 0x60000) != 0x60000) return false;
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

uint32_t cpu_features() {
  uint32_t a, b, c, d;
  uint32_t f = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  if (bit(c, 0)) f |= kSse3;
  if (bit(c, 9)) f |= kSsse3;
  if (bit(c, 19)) f |= kSse41;
  if (bit(c, 20)) f |= kSse42;
  if (bit(c, 22)) f |= kMovbe;
  if (bit(c, 23)) f |= kPopcnt;
  const bool fma = bit(c, 12), f16c = bit(c, 29);
  const bool os_avx = bit(c, 27) && (xcr0() & 0x6) == 0x6;            // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0() & 0xe0) == 0xe0;           // opmask, ZMM state
  if (os_avx && bit(c, 28)) f |= kAvx;
  if (os_avx && fma) f |= kFma;
  if (os_avx && f16c) f |= kF16c;
  if (__get_cpuid(0x80000001, &a, &b, &c, &d) && bit(c, 5)) f |= kLzcnt;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    if (bit(b, 3)) f |= kBmi;
    if (bit(b, 8)) f |= kBmi2;
    if (os_avx && bit(b, 5)) f |= kAvx2;
    if (os_avx512) {
      if (bit(b, 16)) f |= kAvx512F;
      if (bit(b, 17)) f |= kAvx512Dq;
      if (bit(b, 28)) f |= kAvx512Cd;
      if (bit(b, 30)) f |= kAvx512Bw;
      if (bit(b, 31)) f |= kAvx512Vl;
      if (bit(c, 1)) f |= kAvx512Vbmi;
      if (bit(c, 11)) f |= kAvx512Vnni;
      if (bit(d, 23)) f |= kAvx512Fp16;
    }
    if (os_avx512 && bit(d, 24) && amx_permitted()) {
      f |= kAmxTile;
      if (bit(d, 22)) f |= kAmxBf16;
    }
    if (os_avx512 && __get_cpuid_count(7, 1, &a, &b, &c, &d) && bit(a, 5)) f |= kAvx512Bf16;
  }
  return f;
}
#else
uint32_t cpu_features() { return 0; }  // only the baseline level is compiled here
#endif

bool runs_here(const KernelTable& t) {
  static const uint32_t features = cpu_features();
  return (t.required_features & ~features) == 0;
}

std::string level_names() {
  std::string names;
  for (const KernelTable* t : kLevels) names += std::string(names.empty() ? "" : ", ") + t->level;
  return names;
}

const KernelTable& find_level(const std::string& level) {
  for (const KernelTable* t : kLevels) {
    if (level == t->level) {
      TORCH_CHECK(runs_here(*t), "convmixer_kernels: CPU capability '", level,
                  "' needs instructions this CPU (or its OS) lacks; levels that run here: see ",
                  "convmixer_kernels.cpu_capabilities()");
      return *t;
    }
  }
  TORCH_CHECK(false, "convmixer_kernels: CPU capability must be one of the compiled levels (", level_names(),
              "), got '", level, "'");
}

const KernelTable* default_level() {
  if (const char* forced = std::getenv("CONVMIXER_KERNELS_CPU_CAPABILITY")) {
    if (*forced != '\0') return &find_level(forced);
  }
  for (const KernelTable* t : kLevels) {
    if (runs_here(*t)) return t;
  }
  return &baseline::kKernelTable;
}

// Chosen on first use; an invalid CONVMIXER_KERNELS_CPU_CAPABILITY fails that first use
// (and every later one) with its message rather than running another level silently.
std::atomic<const KernelTable*>& active() {
  static std::atomic<const KernelTable*> level{default_level()};
  return level;
}

}  // namespace

const Passes& kernels(DType dtype) { return active().load()->passes[static_cast<int>(dtype)]; }

std::string capability() { return active().load()->level; }

std::vector<std::pair<std::string, bool>> capabilities() {
  std::vector<std::pair<std::string, bool>> out;
  for (const KernelTable* t : kLevels) out.emplace_back(t->level, runs_here(*t));
  return out;
}

void set_capability(const std::string& level) { active().store(&find_level(level)); }

}  // namespace cpu
}  // namespace convmixer_kernels
