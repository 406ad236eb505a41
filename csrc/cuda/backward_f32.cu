// The backward launchers for float (one translation unit per dtype, compiled in parallel).
#include "backward.cuh"

namespace convmixer_kernels {
namespace cuda {
CONVMIXER_CUDA_INSTANTIATE_BACKWARD(float)
}  // namespace cuda
}  // namespace convmixer_kernels
