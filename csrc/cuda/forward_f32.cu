// The forward launchers for float (one translation unit per dtype, compiled in parallel).
#include "forward.cuh"

namespace convmixer_kernels {
namespace cuda {
CONVMIXER_CUDA_INSTANTIATE_FORWARD(float)
}  // namespace cuda
}  // namespace convmixer_kernels
