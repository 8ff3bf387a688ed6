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
  const int64_t n = B * H;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = k / H, j = k - b * H;
    const T* gr = gates + b * 4 * H;
    acc_t i = to_acc(gr[j]), f = to_acc(gr[H + j]), g = to_acc(gr[2 * H + j]),
          o = to_acc(gr[3 * H + j]);
    gates::activate(i, f, g, o);
    const acc_t c = gates::cell_update(i, f, g, to_acc(cx[k]));
    acc_t tc;
    const acc_t h = gates::hidden(o, c, tc);
    acc_t* ar = act + b * 4 * H;
    ar[j] = i;
    ar[H + j] = f;
    ar[2 * H + j] = g;
    ar[3 * H + j] = o;
    cy[k] = from_acc<T>(c);
    hy[k] = from_acc<T>(h);
  }
}

template <typename T>
__global__ void cell_backward_kernel(const T* __restrict__ grad_hy,
                                     const T* __restrict__ grad_cy,
                                     const typename Acc<T>::type* __restrict__ act,
                                     const T* __restrict__ cx, const T* __restrict__ cy,
                                     T* __restrict__ grad_gates, T* __restrict__ grad_cx,
                                     int64_t B, int64_t H) {
  using acc_t = typename Acc<T>::type;
  const int64_t n = B * H;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = k / H, j = k - b * H;
    const acc_t* ar = act + b * 4 * H;
    const acc_t i = ar[j], f = ar[H + j], g = ar[2 * H + j], o = ar[3 * H + j];
    const acc_t tc = gates::tanh_(to_acc(cy[k]));
    acc_t dpre_o, dc_h;
    gates::hidden_backward(to_acc(grad_hy[k]), o, tc, dpre_o, dc_h);
    acc_t dpre_i, dpre_f, dpre_g, dc_prev;
    gates::cell_backward(to_acc(grad_cy[k]) + dc_h, i, f, g, to_acc(cx[k]), dpre_i, dpre_f,
                         dpre_g, dc_prev);
    T* dg = grad_gates + b * 4 * H;
    dg[j] = from_acc<T>(dpre_i);
    dg[H + j] = from_acc<T>(dpre_f);
    dg[2 * H + j] = from_acc<T>(dpre_g);
    dg[3 * H + j] = from_acc<T>(dpre_o);
    grad_cx[k] = from_acc<T>(dc_prev);
  }
}

constexpr int kThreads = 256;

}  // namespace

cudaError_t lstm_cell_forward(DType dtype, const void* gates, const void* cx, void* hy,
                              void* cy, void* act, int64_t B, int64_t H,
                              cudaStream_t stream) {
  if (B * H == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    cell_forward_kernel<T><<<blocks_for(B * H, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(gates), static_cast<const T*>(cx), static_cast<T*>(hy),
        static_cast<T*>(cy), static_cast<acc_t*>(act), B, H);
    return cudaGetLastError();
  });
}

cudaError_t lstm_cell_backward(DType dtype, const void* grad_hy, const void* grad_cy,
                               const void* act, const void* cx, const void* cy,
                               void* grad_gates, void* grad_cx, int64_t B, int64_t H,
                               cudaStream_t stream) {
  if (B * H == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    cell_backward_kernel<T><<<blocks_for(B * H, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(grad_hy), static_cast<const T*>(grad_cy),
        static_cast<const acc_t*>(act), static_cast<const T*>(cx), static_cast<const T*>(cy),
        static_cast<T*>(grad_gates), static_cast<T*>(grad_cx), B, H);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace fusedrnn
