// The LayerNorm LSTM step of the CUDA per-step design (Ba et al.): after the step's cuBLAS
// GEMM hh = (h_{s-1} m_s) W_hh^T, one thread block per batch row does the rest of the step:
// LN_h over the row's G gate pre-activations, the gates, c~, LN_c over its H cells, the output
// o * tanh(LN_c(c~)), zoneout, and the masked h for the next GEMM.  A row's statistics span
// all of its columns, which is why this is one block per row and not the units split of
// layer_common.cuh (and why the persistent design does not take layer norm).  The backward
// likewise: LN_c's backward, the gate gradients, dL/dc_{s-1}, LN_h's backward into dhh.
// LN_h's bias is in xp (the Python side adds it); norm_h_weight / norm_c_weight / norm_c_bias of
// the op carry LN_h's gain and LN_c's gain and bias.
//
// Dimension letters: T steps, B batch, H hidden, R = P or H (width of h), G = 4H gates.
// Statistics: h_stats / c_stats acc [T, 2, B], each row's mean and 1 / sqrt(var + eps).
// The parameter gradients accumulate per row (acc [B, G] / [B, H], every block adds to its
// own row at every step: no atomics); the host sums the rows.
#include "layer_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// The sum of v over the block (every thread gets it); red: 32 acc of shared memory.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* red) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();  // red is free (a previous block_sum has been read)
  if (lane == 0) red[warp] = v;
  __syncthreads();
  return warp_sum(lane < nw ? red[lane] : A(0));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ln_forward_kernel(LayerParams p, int64_t s,
                                                              const typename Acc<T>::type* __restrict__ hh) {
  using A = typename Acc<T>::type;
  __shared__ A red[32];
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t b = blockIdx.x, B = p.B, H = p.H, G = 4 * H, R = p.R;
  const int tid = threadIdx.x, nt = blockDim.x;
  A* act = static_cast<A*>(p.ws_act) + ((p.save ? s : 0) * B + b) * G;
  const A* c_prev = static_cast<A*>(p.ws_c) + ((p.save ? s : (s & 1)) * B + b) * H;
  A* c_new = static_cast<A*>(p.ws_c) + ((p.save ? s + 1 : ((s + 1) & 1)) * B + b) * H;
  A* hhat = static_cast<A*>(p.ws_hh_hat) + ((p.save ? s : 0) * B + b) * G;
  T* hc = p.proj ? static_cast<T*>(p.ws_hc) + ((p.save ? s : 0) * B + b) * H : nullptr;
  T* y = static_cast<T*>(p.y);
  A* h_state = static_cast<A*>(p.h_state) + b * R;
  A* st_h = static_cast<A*>(p.h_stats) + s * 2 * B + b;
  A* st_c = static_cast<A*>(p.c_stats) + s * 2 * B + b;
  const T* mask_next = nullptr;
  T* hm_next = nullptr;
  if (!p.proj && s + 1 < p.T) {
    hm_next = static_cast<T*>(p.ws_hm) + ((p.save ? s + 1 : 0) * B + b) * R;
    if (p.mask) mask_next = static_cast<const T*>(p.mask) + ((p.mask_per_step ? (s + 1) * B : 0) + b) * R;
  }
  auto emit_state = [&](int64_t j, A h) {  // h_state and the masked h for the next GEMM
    h_state[j] = h;
    if (hm_next) hm_next[j] = from_acc<T>(mask_next ? h * to_acc(mask_next[j]) : h);
  };

  if (!rows.active(b, s)) {  // finished row: carry the state, emit zeros
    for (int64_t j = tid; j < H; j += nt) {
      c_new[j] = c_prev[j];
      if (hc) hc[j] = from_acc<T>(A(0));
    }
    for (int64_t k = tid; k < G; k += nt) act[k] = hhat[k] = A(0);
    if (!hc)
      for (int64_t j = tid; j < R; j += nt) {
        y[(s * B + b) * R + j] = from_acc<T>(A(0));
        emit_state(j, h_state[j]);
      }
    if (tid == 0) st_h[0] = st_c[0] = A(0), st_h[B] = st_c[B] = A(1);
    return;
  }
  // LN_h statistics of the row (two passes, as F.layer_norm)
  const A* hr = hh + b * G;
  A acc = 0;
  for (int64_t k = tid; k < G; k += nt) acc += hr[k];
  const A mean_h = block_sum(acc, red) / A(G);
  acc = 0;
  for (int64_t k = tid; k < G; k += nt) {
    const A d = hr[k] - mean_h;
    acc += d * d;
  }
  const A rstd_h = gates::rsqrt_(block_sum(acc, red) / A(G) + A(p.eps));
  // gates and c~ (kept in c_new until the output pass), LN_c's sum
  const T* xr = static_cast<const T*>(p.xp) + (rows.pos(b, s) * B + b) * G;
  const T* gamma_h = static_cast<const T*>(p.gamma_h);
  acc = 0;
  for (int64_t j = tid; j < H; j += nt) {
    A pre[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const A xh = gates::bn_normalize(hr[k * H + j], mean_h, rstd_h);
      hhat[k * H + j] = xh;
      pre[k] = to_acc(xr[k * H + j]) + to_acc(gamma_h[k * H + j]) * xh;
    }
    gates::activate(pre[0], pre[1], pre[2], pre[3]);
#pragma unroll
    for (int k = 0; k < 4; ++k) act[k * H + j] = pre[k];
    const A c = gates::cell_update(pre[0], pre[1], pre[2], c_prev[j]);
    c_new[j] = c;
    acc += c;
  }
  const A mean_c = block_sum(acc, red) / A(H);  // (its barriers order the c_new writes before the reads)
  acc = 0;
  for (int64_t j = tid; j < H; j += nt) {
    const A d = c_new[j] - mean_c;
    acc += d * d;
  }
  const A rstd_c = gates::rsqrt_(block_sum(acc, red) / A(H) + A(p.eps));
  if (tid == 0) st_h[0] = mean_h, st_h[B] = rstd_h, st_c[0] = mean_c, st_c[B] = rstd_c;
  // output, zoneout, the new state
  const T* gamma_c = static_cast<const T*>(p.gamma_c);
  const T* beta_c = static_cast<const T*>(p.beta_c);
  for (int64_t j = tid; j < H; j += nt) {
    const A c_til = c_new[j];
    A tc;
    A h = gates::hidden(act[3 * H + j],
                        to_acc(gamma_c[j]) * gates::bn_normalize(c_til, mean_c, rstd_c) + to_acc(beta_c[j]), tc);
    if (p.zone_c) c_new[j] = zone_mix(zone_at<T>(p, p.zone_c, s, b, j, H), c_prev[j], c_til);
    if (hc) {
      hc[j] = from_acc<T>(h);
      continue;
    }
    if (p.zone_h) h = zone_mix(zone_at<T>(p, p.zone_h, s, b, j, R), h_state[j], h);
    y[(rows.pos(b, s) * B + b) * R + j] = from_acc<T>(h);
    emit_state(j, h);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    ln_backward_kernel(LayerParams p, LayerGrads g, int64_t s, const typename Acc<T>::type* __restrict__ dhc) {
  using A = typename Acc<T>::type;
  __shared__ A red[32];
  extern __shared__ unsigned char smem_raw[];
  A* dpre_s = reinterpret_cast<A*>(smem_raw);  // [G]: the row's gate gradients for LN_h's backward
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t b = blockIdx.x, B = p.B, H = p.H, G = 4 * H, R = p.R;
  const int tid = threadIdx.x, nt = blockDim.x;
  T* grad_xp = static_cast<T*>(g.grad_xp);
  T* dhh = static_cast<T*>(g.dhh) + (s * B + b) * G;
  if (!rows.active(b, s)) {  // finished row: nothing flows into its gates
    for (int64_t k = tid; k < G; k += nt) grad_xp[(s * B + b) * G + k] = dhh[k] = from_acc<T>(A(0));
    return;
  }
  const A* act = static_cast<const A*>(p.ws_act) + (s * B + b) * G;
  const A* c_prev = static_cast<const A*>(p.ws_c) + (s * B + b) * H;
  const A* hhat = static_cast<const A*>(p.ws_hh_hat) + (s * B + b) * G;
  const A* st_c = static_cast<const A*>(p.c_stats) + s * 2 * B + b;
  const A mean_c = st_c[0], rstd_c = st_c[B];
  const A rstd_h = static_cast<const A*>(p.h_stats)[s * 2 * B + B + b];
  const T* gamma_h = static_cast<const T*>(p.gamma_h);
  const T* gamma_c = static_cast<const T*>(p.gamma_c);
  const T* beta_c = static_cast<const T*>(p.beta_c);
  const T* gy = static_cast<const T*>(g.grad_y);
  const A* carry = static_cast<const A*>(g.dh_carry) + b * R;
  A* dc_carry = static_cast<A*>(g.dc_carry) + b * H;
  A* dg_h = static_cast<A*>(g.dgamma_h) + b * G;
  A* dg_c = static_cast<A*>(g.dgamma_c) + b * H;
  A* db_c = static_cast<A*>(g.dbeta_c) + b * H;
  // dL/dh~ of unit j (before the projection; zoneout: 1 - z_h of dL/dh_s)
  auto dh = [&](int64_t j) -> A {
    if (dhc) return dhc[b * H + j];
    const A d = to_acc(gy[(rows.pos(b, s) * B + b) * R + j]) + carry[j];
    return p.zone_h ? (A(1) - zone_at<T>(p, p.zone_h, s, b, j, R)) * d : d;
  };
  // LN_c's x_hat and the output's backward of unit j: (x_hat, dL/d(LN_c output), dL/dpre_o)
  auto out_bwd = [&](int64_t j, A& xc, A& dchat, A& dpre_o) {
    const A c_til = gates::cell_update(act[j], act[H + j], act[2 * H + j], c_prev[j]);
    xc = gates::bn_normalize(c_til, mean_c, rstd_c);
    const A tc = gates::tanh_(to_acc(gamma_c[j]) * xc + to_acc(beta_c[j]));
    gates::hidden_backward(dh(j), act[3 * H + j], tc, dpre_o, dchat);
  };
  // pass 1: LN_c's row sums and parameter gradients
  A a1 = 0, a2 = 0;
  for (int64_t j = tid; j < H; j += nt) {
    A xc, dchat, dpre_o;
    out_bwd(j, xc, dchat, dpre_o);
    const A dx = dchat * to_acc(gamma_c[j]);
    a1 += dx;
    a2 += dx * xc;
    dg_c[j] += dchat * xc;
    db_c[j] += dchat;
  }
  const A m1 = block_sum(a1, red) / A(H);
  const A m2 = block_sum(a2, red) / A(H);
  // pass 2: gate gradients, dL/dc_{s-1}, LN_h's row sums and gain gradient
  T* gx = grad_xp + (rows.pos(b, s) * B + b) * G;
  A n1 = 0, n2 = 0;
  for (int64_t j = tid; j < H; j += nt) {
    A xc, dchat, dpre[4];
    out_bwd(j, xc, dchat, dpre[3]);
    const A dtil = rstd_c * (dchat * to_acc(gamma_c[j]) - m1 - xc * m2);
    dc_carry[j] = zoned_cell_backward<T>(p, s, b, j, dc_carry[j], dtil, act[j], act[H + j], act[2 * H + j], c_prev[j],
                                         dpre[0], dpre[1], dpre[2]);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t col = k * H + j;
      gx[col] = from_acc<T>(dpre[k]);
      dpre_s[col] = dpre[k];
      const A xh = hhat[col];
      const A dxh = dpre[k] * to_acc(gamma_h[col]);
      n1 += dxh;
      n2 += dxh * xh;
      dg_h[col] += dpre[k] * xh;
    }
  }
  const A q1 = block_sum(n1, red) / A(G);  // (its barriers order the dpre_s writes before the reads)
  const A q2 = block_sum(n2, red) / A(G);
  // pass 3: LN_h's backward, dL/d(W_hh h m) of the row
  for (int64_t c = tid; c < G; c += nt)
    dhh[c] = from_acc<T>(rstd_h * (dpre_s[c] * to_acc(gamma_h[c]) - q1 - hhat[c] * q2));
}

}  // namespace

cudaError_t layer_ln_forward(const LayerParams& p, int64_t s, const void* hh, cudaStream_t stream) {
  if (p.B * p.H == 0) return cudaSuccess;
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    return launch(ln_forward_kernel<T>, dim3(static_cast<unsigned>(p.B)), dim3(kThreads), 0, stream, p, s,
                  static_cast<const A*>(hh));
  });
}

cudaError_t layer_ln_backward(const LayerParams& p, const LayerGrads& g, int64_t s, const void* dhc,
                              cudaStream_t stream) {
  if (p.B * p.H == 0) return cudaSuccess;
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const size_t smem = static_cast<size_t>(4 * p.H) * sizeof(A);  // the row of gate gradients
    return launch(ln_backward_kernel<T>, dim3(static_cast<unsigned>(p.B)), dim3(kThreads), smem, stream, p, g, s,
                  static_cast<const A*>(dhc));
  });
}

}  // namespace cuda
}  // namespace fusedrnn
