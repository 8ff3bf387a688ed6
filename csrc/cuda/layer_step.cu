// Per-step design of the CUDA layer recurrence: the caller (cuda/layer_host.cpp) runs one
// cuBLAS GEMM per step into preallocated buffers; these kernels do everything else of a
// step in one launch: BN_h with per-step batch statistics, gates, cell update, BN_c,
// output, and the masked h for the next GEMM.  Each block owns U hidden units of every
// batch row (layer_common.cuh), so the batch reductions stay in the block.  Works for every
// shape, dtype (fp32, fp64, fp16, bf16) and option.
//
// Dimension letters: T steps, B batch, H hidden, P projection, R = P or H, G = 4H,
// U hidden units per block.
#include "layer_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Units per block: 8, fewer when BN's backward scratch ([B][4U] acc) would exceed 48 KB.
template <typename A>
int step_units(const LayerParams& p) {
  int64_t U = 8;
  while (U > 1 && units_scratch(U, p.B, p.bn) * static_cast<int64_t>(sizeof(A)) > 48 * 1024) U /= 2;
  return static_cast<int>(U);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) init_kernel(LayerParams p, const T* __restrict__ h0) {
  using A = typename Acc<T>::type;
  const T* m0 = static_cast<const T*>(p.mask);
  T* hm = static_cast<T*>(p.ws_hm);
  A* h_state = static_cast<A*>(p.h_state);
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < p.B * p.R;
       k += (int64_t)gridDim.x * blockDim.x) {
    const A h = to_acc(h0[k]);
    h_state[k] = h;
    hm[k] = from_acc<T>(m0 ? h * to_acc(m0[k]) : h);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(LayerParams p, int64_t s, int U, const typename Acc<T>::type* __restrict__ hh) {
  using A = typename Acc<T>::type;
  extern __shared__ unsigned char smem_raw[];
  A* sm = reinterpret_cast<A*>(smem_raw);
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * U;
  const int64_t H = p.H, G = 4 * H;
  auto hh_at = [&](int64_t b, int k, int u) { return hh[b * G + k * H + j0 + u]; };
  HmOut<T> next{nullptr, 0, nullptr, 0};
  if (!p.proj && s + 1 < p.T)
    next.a = static_cast<T*>(p.ws_hm) + (p.save ? (s + 1) * p.B * p.R : 0), next.lda = p.R;
  const XpGlobal<T> xq{static_cast<const T*>(p.xp), Rows{p.lengths, p.T, p.reverse}, s, p.B, H, j0};
  forward_units<T>(p, s, j0, U, hh_at, xq, sm, next);
}

// Projection epilogue: hp = hc_s @ W_hr^T is h of running rows.
template <typename T>
__global__ void __launch_bounds__(kThreads) forward_proj_kernel(LayerParams p, int64_t s, const T* __restrict__ hp) {
  using A = typename Acc<T>::type;
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t B = p.B, R = p.R;
  T* y = static_cast<T*>(p.y);
  A* h_state = static_cast<A*>(p.h_state);
  const T* mask_next = nullptr;
  if (p.mask && s + 1 < p.T)
    mask_next = static_cast<const T*>(p.mask) + (p.mask_per_step ? (s + 1) * B * R : 0);
  T* hm = s + 1 < p.T ? static_cast<T*>(p.ws_hm) + (p.save ? (s + 1) * B * R : 0) : nullptr;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < B * R;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = k / R, r = k - b * R;
    if (rows.active(b, s)) {
      A h = to_acc(hp[k]);
      if (p.zone_h) h = zone_mix(zone_at<T>(p, p.zone_h, s, b, r, R), h_state[k], h);
      y[(rows.pos(b, s) * B + b) * R + r] = p.zone_h ? from_acc<T>(h) : hp[k];
      h_state[k] = h;
    } else {
      y[(s * B + b) * R + r] = from_acc<T>(A(0));
    }
    if (hm) hm[k] = from_acc<T>(mask_next ? h_state[k] * to_acc(mask_next[k]) : h_state[k]);
  }
}

// dL/dh~_s = (grad_y[pos] + dh_carry) (times 1 - z_h with zoneout) of running rows (0 for
// finished ones), into dh_all[s].
template <typename T>
__global__ void __launch_bounds__(kThreads) backward_pre_kernel(LayerParams p, LayerGrads g, int64_t s) {
  using A = typename Acc<T>::type;
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t B = p.B, R = p.R;
  const T* gy = static_cast<const T*>(g.grad_y);
  const A* carry = static_cast<const A*>(g.dh_carry);
  T* dh = static_cast<T*>(g.dh_all) + s * B * R;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < B * R;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = k / R, r = k - b * R;
    A v = 0;
    if (rows.active(b, s)) {
      v = to_acc(gy[(rows.pos(b, s) * B + b) * R + r]) + carry[k];
      if (p.zone_h) v *= A(1) - zone_at<T>(p, p.zone_h, s, b, r, R);
    }
    dh[k] = from_acc<T>(v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(LayerParams p, LayerGrads g, int64_t s, int U, const typename Acc<T>::type* __restrict__ dhc) {
  using A = typename Acc<T>::type;
  extern __shared__ unsigned char smem_raw[];
  A* sm = reinterpret_cast<A*>(smem_raw);
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * U;
  const int64_t B = p.B, H = p.H, R = p.R;
  const T* gy = static_cast<const T*>(g.grad_y);
  const A* carry = static_cast<const A*>(g.dh_carry);
  auto dh_at = [&](int64_t b, int64_t j) -> A {
    if (dhc) return dhc[b * H + j];
    const A d = to_acc(gy[(rows.pos(b, s) * B + b) * R + j]) + carry[b * R + j];
    return p.zone_h ? (A(1) - zone_at<T>(p, p.zone_h, s, b, j, R)) * d : d;
  };
  T* dhh = static_cast<T*>(g.dhh) + s * B * 4 * H;
  backward_units<T>(p, g, s, j0, U, dh_at, saved_global<A>(p, s), sm, dhh, nullptr);
}

// dh_carry = dh_rec * m_s for running rows (finished rows keep their carry); with zoneout
// plus z_h of dL/dh_s (grad_y[pos] + the old carry), which reaches h_{s-1} directly.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_merge_kernel(LayerParams p, LayerGrads g, int64_t s, const typename Acc<T>::type* __restrict__ dh_rec) {
  using A = typename Acc<T>::type;
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t B = p.B, R = p.R;
  const T* m = p.mask ? static_cast<const T*>(p.mask) + (p.mask_per_step ? s * B * R : 0) : nullptr;
  A* carry = static_cast<A*>(g.dh_carry);
  const T* gy = static_cast<const T*>(g.grad_y);
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < B * R;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = k / R, r = k - b * R;
    if (!rows.active(b, s)) continue;
    A v = m ? dh_rec[k] * to_acc(m[k]) : dh_rec[k];
    if (p.zone_h)
      v += zone_at<T>(p, p.zone_h, s, b, r, R) * (to_acc(gy[(rows.pos(b, s) * B + b) * R + r]) + carry[k]);
    carry[k] = v;
  }
}

// Shared memory of the units routines: the forward uses 10U statistics, the backward
// units_scratch (16U, plus [B][4U] of gate gradients with BN).
template <typename T>
size_t units_smem(const LayerParams& p, int U, bool backward) {
  const int64_t n = backward ? units_scratch(U, p.B, p.bn) : 16 * U;
  return static_cast<size_t>(n) * sizeof(typename Acc<T>::type);
}

// A launch of forward_kernel or backward_kernel (one block per U = step_units hidden units of
// every row, units_smem of shared memory): go(T{}, U, grid, smem) launches it for the element type
// T of p.dtype; nothing to launch for an empty problem.
template <class Go>
cudaError_t launch_units(const LayerParams& p, bool backward, const Go& go) {
  if (p.B * p.H == 0) return cudaSuccess;
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int U = step_units<typename Acc<T>::type>(p);
    return go(tag, U, dim3(static_cast<unsigned>((p.H + U - 1) / U)), units_smem<T>(p, U, backward));
  });
}

}  // namespace

cudaError_t layer_step_init(const LayerParams& p, const void* h0, cudaStream_t stream) {
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_flat(init_kernel<T>, p.B * p.R, kThreads, stream, p, static_cast<const T*>(h0));
  });
}

cudaError_t layer_step_forward(const LayerParams& p, int64_t s, const void* hh, cudaStream_t stream) {
  return launch_units(p, false, [&](auto tag, int U, dim3 grid, size_t smem) {
    using T = decltype(tag);
    return launch(forward_kernel<T>, grid, dim3(kThreads), smem, stream, p, s, U,
                  static_cast<const typename Acc<T>::type*>(hh));
  });
}

cudaError_t layer_step_forward_proj(const LayerParams& p, int64_t s, const void* hp, cudaStream_t stream) {
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_flat(forward_proj_kernel<T>, p.B * p.R, kThreads, stream, p, s, static_cast<const T*>(hp));
  });
}

cudaError_t layer_step_backward_pre(const LayerParams& p, const LayerGrads& g, int64_t s, cudaStream_t stream) {
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_flat(backward_pre_kernel<T>, p.B * p.R, kThreads, stream, p, g, s);
  });
}

cudaError_t layer_step_backward(const LayerParams& p, const LayerGrads& g, int64_t s, const void* dhc,
                                cudaStream_t stream) {
  return launch_units(p, true, [&](auto tag, int U, dim3 grid, size_t smem) {
    using T = decltype(tag);
    return launch(backward_kernel<T>, grid, dim3(kThreads), smem, stream, p, g, s, U,
                  static_cast<const typename Acc<T>::type*>(dhc));
  });
}

cudaError_t layer_step_backward_merge(const LayerParams& p, const LayerGrads& g, int64_t s, const void* dh_rec,
                                      cudaStream_t stream) {
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    return launch_flat(backward_merge_kernel<T>, p.B * p.R, kThreads, stream, p, g, s,
                       static_cast<const A*>(dh_rec));
  });
}

}  // namespace cuda
}  // namespace fusedrnn
