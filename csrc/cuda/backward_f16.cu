// The backward launchers for __half (one translation unit per dtype, compiled in parallel).
#include "backward.cuh"

namespace convmixer_kernels {
namespace cuda {
CONVMIXER_CUDA_INSTANTIATE_BACKWARD(__half)
}  // namespace cuda
}  // namespace convmixer_kernels
