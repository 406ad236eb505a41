// The forward launchers for __half (one translation unit per dtype, compiled in parallel).
#include "forward.cuh"

namespace convmixer_kernels {
namespace cuda {
CONVMIXER_CUDA_INSTANTIATE_FORWARD(__half)
}  // namespace cuda
}  // namespace convmixer_kernels
