// How the tests drive the emulator: options for the next calls, and the text of the last
// error (device.h is what the kernels see; this is what api.cpp sees).
#pragma once

#include <cstdint>
#include <string>

#include "device.h"

namespace cuda_emu {

// The order threads run between barriers, and blocks run in a grid.
enum Order : int { kOrderAscending = 0, kOrderDescending = 1, kOrderShuffled = 2 };

struct Options {
  // an H100 SXM; the kernels plan their grids and pipelines from these. Function attributes
  // belong to a device: one with other properties needs another index.
  int device = 0;
  int multiprocessors = 132;
  size_t smem_per_multiprocessor = 228 * 1024;
  size_t smem_per_block_optin = kMaxDynamicSmem;  // at most kMaxDynamicSmem
  int order = kOrderAscending;
  uint64_t seed = 0;          // of the shuffled order
};

// Sets the options and clears any recorded error.
void configure(const Options& options);

// What went wrong in the first failed call since configure() or take_message(), beyond
// its cudaError_t; take_message() also clears it.
std::string take_message();

}  // namespace cuda_emu

namespace convmixer_kernels {
namespace cuda {
// selftest.cpp: runs the fault kernel `name` with 256 threads writing to out[256].
cudaError_t run_selftest(const std::string& name, int32_t* out);
}  // namespace cuda
}  // namespace convmixer_kernels
