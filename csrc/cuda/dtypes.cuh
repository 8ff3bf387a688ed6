// Element-type plumbing for the torch-free CUDA kernels: conversions to and from the
// accumulation type, and the dispatch from launch.h's DType to a template.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "launch.h"

namespace fusedrnn {
namespace cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> struct FromAcc {
  __device__ __forceinline__ static T cvt(typename Acc<T>::type v) { return v; }
};
template <> struct FromAcc<__half> {
  __device__ __forceinline__ static __half cvt(float v) { return __float2half(v); }
};
template <> struct FromAcc<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 cvt(float v) { return __float2bfloat16(v); }
};
template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type v) { return FromAcc<T>::cvt(v); }

// Calls fn(T{}) with T the element type of dtype.
template <typename Fn>
cudaError_t dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32: return fn(float{});
    case DType::kF64: return fn(double{});
    case DType::kF16: return fn(__half{});
    case DType::kBF16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

inline unsigned int blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned int>(b < 65535 * 8 ? (b < 1 ? 1 : b) : 65535 * 8);
}

}  // namespace cuda
}  // namespace fusedrnn
