// Torch-side helpers of the CUDA host code (cell_host.cpp, batch_norm_host.cpp, layer_host.cpp):
// a tensor's launch.h dtype, the launch check, the current stream and the pointer wiring.  Only c10/cuda headers;
// never included by the .cu files.
#pragma once

#include <c10/cuda/CUDAStream.h>

#include <utility>

#include "../ops.h"
#include "launch.h"

namespace fusedrnn {

inline cuda::DType dtype_of_scalar(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return cuda::DType::kF32;
    case at::kDouble: return cuda::DType::kF64;
    case at::kHalf: return cuda::DType::kF16;
    case at::kBFloat16: return cuda::DType::kBF16;
    default: TORCH_CHECK(false, "fusedrnn: unsupported dtype ", st);
  }
}

inline cuda::DType dtype_of(const at::Tensor& t) { return dtype_of_scalar(t.scalar_type()); }

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fusedrnn: CUDA launch of ", what, " failed: ", cudaGetErrorString(err));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline const void* ptr_or_null(const OptT& t) { return t.has_value() ? t->data_ptr() : nullptr; }

// Points each launcher field (void* or const void*) at its tensor's data, in pairs:
// bind(p.y, y, p.ws_act, ws_act, ...).
template <typename P, typename... Rest>
void bind(P*& field, const at::Tensor& t, Rest&&... rest) {
  field = t.data_ptr();
  if constexpr (sizeof...(Rest) > 0) bind(std::forward<Rest>(rest)...);
}

}  // namespace fusedrnn
