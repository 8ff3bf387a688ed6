// CUDA kernels of the fused LSTM cell pointwise step (fusedrnn::lstm_cell_forward/backward).
// Dimension letters: B batch, H hidden, G = 4H gates (i, f, g, o).
// One thread per (batch row, hidden unit), grid-stride; the gate math is csrc/gates.h.
#include "../gates.h"
#include "dtypes.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

template <typename T>
__global__ void cell_forward_kernel(const T* __restrict__ gates, const T* __restrict__ cx,
                                    T* __restrict__ hy, T* __restrict__ cy,
                                    typename Acc<T>::type* __restrict__ act, int64_t B,
                                    int64_t H) {
  using acc_t = typename Acc<T>::type;
  grid_stride(B * H, [&](int64_t k) {
    const int64_t b = k / H, j = k - b * H;
    const T* gr = gates + b * 4 * H;
    acc_t* ar = act + b * 4 * H;
    acc_t a[4], c, h;
#pragma unroll
    for (int q = 0; q < 4; ++q) a[q] = to_acc(gr[q * H + j]);
    gates::cell_step(a[0], a[1], a[2], a[3], to_acc(cx[k]), c, h);
#pragma unroll
    for (int q = 0; q < 4; ++q) ar[q * H + j] = a[q];
    cy[k] = from_acc<T>(c);
    hy[k] = from_acc<T>(h);
  });
}

template <typename T>
__global__ void cell_backward_kernel(const T* __restrict__ grad_hy,
                                     const T* __restrict__ grad_cy,
                                     const typename Acc<T>::type* __restrict__ act,
                                     const T* __restrict__ cx, const T* __restrict__ cy,
                                     T* __restrict__ grad_gates, T* __restrict__ grad_cx,
                                     int64_t B, int64_t H) {
  using acc_t = typename Acc<T>::type;
  grid_stride(B * H, [&](int64_t k) {
    const int64_t b = k / H, j = k - b * H;
    const acc_t* ar = act + b * 4 * H;
    acc_t d[4], dc_prev;
    gates::cell_step_backward(ar[j], ar[H + j], ar[2 * H + j], ar[3 * H + j], to_acc(cx[k]), to_acc(cy[k]),
                              to_acc(grad_hy[k]), to_acc(grad_cy[k]), d, dc_prev);
    T* dg = grad_gates + b * 4 * H;
#pragma unroll
    for (int q = 0; q < 4; ++q) dg[q * H + j] = from_acc<T>(d[q]);
    grad_cx[k] = from_acc<T>(dc_prev);
  });
}

constexpr int kThreads = 256;

}  // namespace

cudaError_t lstm_cell_forward(DType dtype, const void* gates, const void* cx, void* hy,
                              void* cy, void* act, int64_t B, int64_t H,
                              cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    return launch_flat(cell_forward_kernel<T>, B * H, kThreads, stream, static_cast<const T*>(gates),
                       static_cast<const T*>(cx), static_cast<T*>(hy), static_cast<T*>(cy), static_cast<acc_t*>(act),
                       B, H);
  });
}

cudaError_t lstm_cell_backward(DType dtype, const void* grad_hy, const void* grad_cy,
                               const void* act, const void* cx, const void* cy,
                               void* grad_gates, void* grad_cx, int64_t B, int64_t H,
                               cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    return launch_flat(cell_backward_kernel<T>, B * H, kThreads, stream, static_cast<const T*>(grad_hy),
                       static_cast<const T*>(grad_cy), static_cast<const acc_t*>(act), static_cast<const T*>(cx),
                       static_cast<const T*>(cy), static_cast<T*>(grad_gates), static_cast<T*>(grad_cx), B, H);
  });
}

}  // namespace cuda
}  // namespace fusedrnn
