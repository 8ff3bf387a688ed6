// CUDA kernels of per-step batch norm over a whole sequence (BN_x of recurrent batch
// norm, fusedrnn::batch_norm_steps_*): statistics of every step at once, outside the
// recurrence.
//
// Dimension letters: T steps, B batch, F features.  Block (x, y) owns 32 feature columns
// of step s = y: lanes map to columns (coalesced), the 8 warps split the rows, and the
// batch reduction crosses warps through shared memory.  Step s of row b reads / writes
// position pos(b, s); finished rows (padding) come out as bias and get zero gradient.
// The weight gradient is written per step ([T, F] partial sums, reduced by the caller),
// so the result does not depend on the order of floating-point atomics.
#include <algorithm>

#include "layer_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

constexpr int kCols = 32, kRowWarps = 8;

// Sum of v over the kRowWarps warps of the block, for this thread's column; all threads get it.
template <typename A>
__device__ A block_col_sum(A v, A* sm) {
  sm[threadIdx.y * kCols + threadIdx.x] = v;
  __syncthreads();
  A t = 0;
  for (int w = 0; w < kRowWarps; ++w) t += sm[w * kCols + threadIdx.x];
  __syncthreads();
  return t;
}

template <typename T>
__global__ void __launch_bounds__(kCols * kRowWarps)
    bn_forward_kernel(const T* __restrict__ v, const T* __restrict__ w, const T* __restrict__ bias, Rows rows,
                      int64_t B, int64_t F, bool training, double eps, typename Acc<T>::type* __restrict__ mean,
                      typename Acc<T>::type* __restrict__ var, T* __restrict__ out) {
  using A = typename Acc<T>::type;
  __shared__ A sm[kRowWarps * kCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const bool col_ok = c < F;
  for (int64_t s = blockIdx.y; s < rows.T; s += gridDim.y) {
    A mu, var_s;
    if (training) {
      A sum = 0, n = 0;
      for (int64_t b = threadIdx.y; b < B; b += kRowWarps)
        if (col_ok && rows.active(b, s)) {
          sum += to_acc(v[(rows.pos(b, s) * B + b) * F + c]);
          n += A(1);
        }
      sum = block_col_sum(sum, sm);
      n = block_col_sum(n, sm);
      const A inv_n = n > A(0) ? A(1) / n : A(0);
      mu = sum * inv_n;
      A sq = 0;
      for (int64_t b = threadIdx.y; b < B; b += kRowWarps)
        if (col_ok && rows.active(b, s)) {
          const A d = to_acc(v[(rows.pos(b, s) * B + b) * F + c]) - mu;
          sq += d * d;
        }
      var_s = block_col_sum(sq, sm) * inv_n;
      if (threadIdx.y == 0 && col_ok) {
        mean[s * F + c] = mu;
        var[s * F + c] = var_s;
      }
    } else {
      mu = col_ok ? mean[s * F + c] : A(0);
      var_s = col_ok ? var[s * F + c] : A(1);
    }
    if (!col_ok) continue;
    const A rstd = gates::rsqrt_(var_s + A(eps));
    const A gw = to_acc(w[c]);
    const A bb = bias ? to_acc(bias[c]) : A(0);
    for (int64_t b = threadIdx.y; b < B; b += kRowWarps) {
      if (rows.active(b, s)) {
        const int64_t o = (rows.pos(b, s) * B + b) * F + c;
        out[o] = from_acc<T>(gw * gates::bn_normalize(to_acc(v[o]), mu, rstd) + bb);
      } else {
        out[(s * B + b) * F + c] = from_acc<T>(bb);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kCols * kRowWarps)
    bn_backward_kernel(const T* __restrict__ g, const T* __restrict__ v, const T* __restrict__ w, Rows rows,
                       int64_t B, int64_t F, bool training, double eps, const typename Acc<T>::type* __restrict__ mean,
                       const typename Acc<T>::type* __restrict__ var, T* __restrict__ gv,
                       typename Acc<T>::type* __restrict__ gw_part) {
  using A = typename Acc<T>::type;
  __shared__ A sm[kRowWarps * kCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const bool col_ok = c < F;
  for (int64_t s = blockIdx.y; s < rows.T; s += gridDim.y) {
    const A mu = col_ok ? mean[s * F + c] : A(0);
    const A rstd = col_ok ? gates::rsqrt_(var[s * F + c] + A(eps)) : A(0);
    const A gc = col_ok ? to_acc(w[c]) : A(0);
    A s1 = 0, s2 = 0, dg = 0, n = 0;
    for (int64_t b = threadIdx.y; b < B; b += kRowWarps)
      if (col_ok && rows.active(b, s)) {
        const int64_t o = (rows.pos(b, s) * B + b) * F + c;
        const A xhat = gates::bn_normalize(to_acc(v[o]), mu, rstd);
        const A gg = to_acc(g[o]);
        s1 += gg * gc;
        s2 += gg * gc * xhat;
        dg += gg * xhat;
        n += A(1);
      }
    s1 = block_col_sum(s1, sm);
    s2 = block_col_sum(s2, sm);
    dg = block_col_sum(dg, sm);
    n = block_col_sum(n, sm);
    if (!col_ok) continue;
    if (threadIdx.y == 0) gw_part[s * F + c] = dg;
    const A n_bn = training ? n : A(0);
    for (int64_t b = threadIdx.y; b < B; b += kRowWarps) {
      if (rows.active(b, s)) {
        const int64_t o = (rows.pos(b, s) * B + b) * F + c;
        const A xhat = gates::bn_normalize(to_acc(v[o]), mu, rstd);
        gv[o] = from_acc<T>(gates::bn_backward(to_acc(g[o]) * gc, xhat, rstd, s1, s2, n_bn));
      } else {
        gv[(s * B + b) * F + c] = from_acc<T>(A(0));
      }
    }
  }
}

dim3 bn_grid(int64_t T, int64_t F) {
  return dim3(static_cast<unsigned>((F + kCols - 1) / kCols), static_cast<unsigned>(std::min<int64_t>(T, 65535)));
}

}  // namespace

cudaError_t batch_norm_steps_forward(DType dtype, const void* v, const void* weight, const void* bias,
                                     const int64_t* lengths, bool reverse, int64_t T, int64_t B, int64_t F,
                                     bool training, double eps, void* mean, void* var, void* out,
                                     cudaStream_t stream) {
  if (T * B * F == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    using A = typename Acc<T_>::type;
    return launch(bn_forward_kernel<T_>, bn_grid(T, F), dim3(kCols, kRowWarps), 0, stream, static_cast<const T_*>(v),
                  static_cast<const T_*>(weight), static_cast<const T_*>(bias), Rows{lengths, T, reverse}, B, F,
                  training, eps, static_cast<A*>(mean), static_cast<A*>(var), static_cast<T_*>(out));
  });
}

cudaError_t batch_norm_steps_backward(DType dtype, const void* grad_out, const void* v, const void* weight,
                                      const int64_t* lengths, bool reverse, int64_t T, int64_t B, int64_t F,
                                      bool training, double eps, const void* mean, const void* var, void* grad_v,
                                      void* grad_w_part, cudaStream_t stream) {
  if (T * B * F == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    using A = typename Acc<T_>::type;
    return launch(bn_backward_kernel<T_>, bn_grid(T, F), dim3(kCols, kRowWarps), 0, stream,
                  static_cast<const T_*>(grad_out), static_cast<const T_*>(v), static_cast<const T_*>(weight),
                  Rows{lengths, T, reverse}, B, F, training, eps, static_cast<const A*>(mean),
                  static_cast<const A*>(var), static_cast<T_*>(grad_v), static_cast<A*>(grad_w_part));
  });
}

}  // namespace cuda
}  // namespace fusedrnn
