// The forward launchers for __nv_bfloat16 (one translation unit per dtype, compiled in parallel).
#include "forward.cuh"

namespace convmixer_kernels {
namespace cuda {
CONVMIXER_CUDA_INSTANTIATE_FORWARD(__nv_bfloat16)
}  // namespace cuda
}  // namespace convmixer_kernels
