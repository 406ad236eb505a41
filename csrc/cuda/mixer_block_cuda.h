// Launchers of the CUDA kernels of the mixer block. Plain C++ over the params structs of
// ../mixer_block_params.h and a cudaStream_t; no torch header, so this compiles with nvcc
// alone. The torch bindings (csrc/cuda/binding.cpp) allocate outputs and workspaces,
// pick T and the layout, and call these.
//
// T is float, __half or __nv_bfloat16; the per-channel vectors of the params (gamma,
// beta, mean, var, and the backward's dweight, dbias, dgamma, dbeta) are float. Every
// activation-sized tensor of a call (x, y, grad_out, dx, dh) must be dense in `L`; the
// launchers check the strides of the Geometry against it.
//
// Each launcher returns the first CUDA error of its launches (cudaGetLastError after each
// one), or cudaErrorInvalidValue, before launching anything, for a geometry it was not
// built for or a call whose kernels need more shared memory than the device gives a block
// (shared_memory_shortfall says which).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "../mixer_block_params.h"

namespace convmixer_kernels {
namespace cuda {

enum class Layout { kNCHW, kChannelsLast };

// The launchers, each a sequence of passes: forward_eval (apply), forward_train (stats,
// apply) and backward (grad_sums, grad_h, grad_x).
enum class Call { kForwardEval, kForwardTrain, kBackward };

// Why the passes of `call` on `g` cannot launch on the current device: the pass whose
// shared memory per block, on the smallest tiles it has, exceeds the device's limit, with
// both figures; empty where the call can run. Devices under 128 KB per block (sm_86,
// sm_89, sm_120: 99 KB) cannot run float32 at the largest generic kernel sizes.
template <typename T>
std::string shared_memory_shortfall(const Geometry& g, Call call);

// The same for a mixer block of kernel size k as a whole, any shape: its forward in either
// mode and its backward (a backend chosen for the forward runs the backward too).
template <typename T>
std::string shared_memory_shortfall(int kernel_size);

// Bytes of the float workspace the training forward needs (per-tile Welford partials),
// for the current device. The binding allocates it on that device and passes it in.
template <typename T>
size_t forward_train_workspace_bytes(const Geometry& g);

// Bytes of the float workspace of the backward (per-tile partials of the reductions),
// for the current device. The dh buffer (x's shape, dtype and strides) is separate.
template <typename T>
size_t backward_workspace_bytes(const Geometry& g, bool batch_stats);

// Eval: y = x + (act(dwconv(x) + b) - mean_in) * gamma * rsqrt(var_in + eps) + beta. One pass.
template <typename T, Layout L>
cudaError_t forward_eval(const ForwardParams& p, cudaStream_t stream);

// Training: statistics pass (per-tile Welford partials, ordered Chan merge) writing
// mean_out and the biased var_out, then the apply pass of forward_eval with them.
template <typename T, Layout L>
cudaError_t forward_train(const ForwardParams& p, void* workspace, cudaStream_t stream);

// Backward of BackwardParams: [sums of dy and dy * xhat (batch_stats only)] -> dh with
// the dweight and dbias partials -> dx = dy + conv_transpose(dh). `dh` is a scratch
// buffer with x's shape, dtype and strides.
template <typename T, Layout L>
cudaError_t backward(const BackwardParams& p, void* workspace, void* dh, cudaStream_t stream);

}  // namespace cuda
}  // namespace convmixer_kernels
