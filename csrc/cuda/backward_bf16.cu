// The backward launchers for __nv_bfloat16 (one translation unit per dtype, compiled in parallel).
#include "backward.cuh"

namespace convmixer_kernels {
namespace cuda {
CONVMIXER_CUDA_INSTANTIATE_BACKWARD(__nv_bfloat16)
}  // namespace cuda
}  // namespace convmixer_kernels
