// The plain launcher interface between the torch bindings (cuda/register.cpp) and the
// CUDA kernels (*.cu).  No torch headers here or in the .cu files: they compile with
// nvcc alone, quickly, and the bindings adapt tensors to raw pointers.
//
// Dimension letters: B batch, H hidden, G = 4H gates (i, f, g, o).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fusedrnn {
namespace cuda {

// Element type of the data tensors.  Accumulation and cell state are fp32 for
// kF32 / kF16 / kBF16 and fp64 for kF64.
enum class DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

// hy, cy: [B, H] in dtype; act: [B, G] in the accumulation type.  All contiguous.
cudaError_t lstm_cell_forward(DType dtype, const void* gates, const void* cx, void* hy,
                              void* cy, void* act, int64_t B, int64_t H,
                              cudaStream_t stream);

// grad_gates: [B, G] and grad_cx: [B, H] in dtype.  All contiguous.
cudaError_t lstm_cell_backward(DType dtype, const void* grad_hy, const void* grad_cy,
                               const void* act, const void* cx, const void* cy,
                               void* grad_gates, void* grad_cx, int64_t B, int64_t H,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedrnn
