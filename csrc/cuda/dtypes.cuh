// Element-type plumbing for the torch-free CUDA kernels: conversions to and from the
// accumulation type, the dispatch from launch.h's DType to a template, and the launch helpers
// (grid sizes, dynamic shared memory above 48 KB).
#pragma once

#include <map>
#include <mutex>
#include <utility>

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

// Calls fn(T{}) with T the element type of dtype and returns its result (any type).
template <typename Fn>
auto dispatch(DType dtype, Fn&& fn) -> decltype(fn(float{})) {
  switch (dtype) {
    case DType::kF64: return fn(double{});
    case DType::kF16: return fn(__half{});
    case DType::kBF16: return fn(__nv_bfloat16{});
    default: return fn(float{});
  }
}

// Calls fn(k) for every k in [0, n), spread over the whole grid (a grid-stride loop).
template <class Fn>
__device__ __forceinline__ void grid_stride(int64_t n, Fn fn) {
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) fn(k);
}

inline unsigned int blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned int>(b < 65535 * 8 ? (b < 1 ? 1 : b) : 65535 * 8);
}

// The opt-in shared-memory limit per block of the current device.
inline size_t smem_optin() {
  int dev = 0, optin = 48 * 1024;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    cudaGetLastError();
    return 48 * 1024;
  }
  return static_cast<size_t>(optin);
}

// The most dynamic shared memory kernel may take on the current device: its attribute
// MaxDynamicSharedMemorySize, set once per device and kernel to the opt-in limit less the
// kernel's static shared memory (0 when a query or the set fails; the error is cleared, and the
// next call tries again).  Set once and to the largest value rather than to each launch's need:
// the attribute belongs to the kernel, not to a launch, so a set per launch would race with
// another host thread's launch of the same kernel with a larger need (its set, this set, its
// launch: refused).  The attribute only permits; each launch still asks for what it needs.
inline size_t smem_opt_in(const void* kernel) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, size_t> allowed;  // (device, kernel) -> bytes
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const std::lock_guard<std::mutex> lock(mu);
  const auto it = allowed.find({dev, kernel});
  if (it != allowed.end()) return it->second;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const size_t optin = smem_optin();
  const size_t most = optin > attr.sharedSizeBytes ? optin - attr.sharedSizeBytes : 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most)) !=
      cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  allowed.emplace(std::make_pair(dev, kernel), most);
  return most;
}

// Dynamic shared memory of a launch: up to 48 KB needs nothing; above, the kernel opts in
// (smem_opt_in: large batches with BN, layer norm's row of gate gradients at large H, the
// persistent kernels), and a size beyond what the device allows it is refused with
// cudaErrorInvalidConfiguration.
inline cudaError_t prepare_smem(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return bytes <= smem_opt_in(kernel) ? cudaSuccess : cudaErrorInvalidConfiguration;
}

// kernel<<<grid, block, smem, stream>>>(args...) (prepare_smem first); returns the launch error.
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
  const cudaError_t err = prepare_smem(reinterpret_cast<const void*>(kernel), smem);
  if (err != cudaSuccess) return err;
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
}

// A grid-stride kernel over n elements with `threads` threads per block (nothing for n = 0).
template <typename... KArgs, typename... Args>
cudaError_t launch_flat(void (*kernel)(KArgs...), int64_t n, int threads, cudaStream_t stream, Args&&... args) {
  if (n == 0) return cudaSuccess;
  return launch(kernel, dim3(blocks_for(n, threads)), dim3(threads), 0, stream, std::forward<Args>(args)...);
}

}  // namespace cuda
}  // namespace fusedrnn
