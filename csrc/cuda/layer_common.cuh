// Device code shared by the per-step and the persistent CUDA designs of the layer
// recurrence: what one thread block does for its hidden units [j0, j0 + U) and every
// batch row at one step, forward and backward.  The block owns whole hidden units (gate
// columns j, H + j, 2H + j, 3H + j of every row), so the batch-norm reductions over the
// batch stay inside the block.
//
// Dimension letters: T steps, B batch, H hidden, R = P or H (width of h), G = 4H gates
// (i, f, g, o), U hidden units per block, S running-statistics slots.  s is the step,
// pos(b, s) the time position row b reads / writes at step s.
#pragma once

#include "../gates.h"
#include "dtypes.cuh"
#include "launch.h"

namespace fusedrnn {
namespace cuda {

struct Rows {
  const int64_t* lengths;
  int64_t T;
  bool reverse;
  __device__ __forceinline__ int64_t len(int64_t b) const { return lengths ? lengths[b] : T; }
  __device__ __forceinline__ bool active(int64_t b, int64_t s) const { return s < len(b); }
  __device__ __forceinline__ int64_t pos(int64_t b, int64_t s) const {
    return reverse ? len(b) - 1 - s : s;
  }
};

// Calls fn(b, u, j) for every batch row b and every unit u < Uv of the block's U (j = j0 + u, its
// hidden unit), the block's threads spread over the B x U pairs (u fastest).
template <class Fn>
__device__ __forceinline__ void for_units(int64_t B, int U, int Uv, int64_t j0, Fn fn) {
  for (int64_t e = threadIdx.x; e < B * U; e += blockDim.x) {
    const int u = static_cast<int>(e % U);
    const int64_t b = e / U;
    if (u < Uv) fn(b, u, j0 + u);
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// v = warp_sum(v) for each argument, in order.
template <typename... A>
__device__ __forceinline__ void warp_sums(A&... v) {
  ((v = warp_sum(v)), ...);
}

// The biased mean and variance of v(b) over the rows active at step s (inv_n = 1 / their
// count), a warp's reduction: every lane gets them.
template <typename A, class V>
__device__ __forceinline__ void warp_moments(const Rows& rows, int64_t s, int64_t B, A inv_n, int lane, V v, A& mean,
                                             A& var) {
  A sum = 0;
  for (int64_t b = lane; b < B; b += 32)
    if (rows.active(b, s)) sum += v(b);
  mean = warp_sum(sum) * inv_n;
  A sq = 0;
  for (int64_t b = lane; b < B; b += 32)
    if (rows.active(b, s)) {
      const A d = v(b) - mean;
      sq += d * d;
    }
  var = warp_sum(sq) * inv_n;
}

// The statistics of one batch-norm column (col of a width-wide layout) at step s: in
// training warp_moments of v, stored to stats[s, 0 | 1, col] by lane 0; in eval the running
// statistics of slot.  Lane 0 stores the mean and 1 / sqrt(var + eps) to *mean_out, *rstd_out.
template <typename T, typename A, class V>
__device__ __forceinline__ void column_stats(const LayerParams& p, const Rows& rows, int64_t s, int64_t slot, A inv_n,
                                             int lane, void* stats, const void* run_mean, const void* run_var,
                                             int64_t width, int64_t col, V v, A* mean_out, A* rstd_out) {
  A mean, var;
  if (p.bn_train) {
    warp_moments(rows, s, p.B, inv_n, lane, v, mean, var);
    if (lane == 0) {
      A* st = static_cast<A*>(stats);
      st[(s * 2) * width + col] = mean;
      st[(s * 2 + 1) * width + col] = var;
    }
  } else {
    mean = to_acc(static_cast<const T*>(run_mean)[slot * width + col]);
    var = to_acc(static_cast<const T*>(run_var)[slot * width + col]);
  }
  if (lane == 0) {
    *mean_out = mean;
    *rstd_out = gates::rsqrt_(var + A(p.eps));
  }
}

// The zoneout weight of the previous state of row b, column j at step s (z of a W-wide
// state: W = H for c, R for h), and the zoned value z * prev + (1 - z) * fresh.
template <typename T>
__device__ __forceinline__ typename Acc<T>::type zone_at(const LayerParams& p, const void* z, int64_t s, int64_t b,
                                                         int64_t j, int64_t W) {
  const T* zp = static_cast<const T*>(z);
  return to_acc(p.zone_scalar ? zp[0] : zp[(s * p.B + b) * W + j]);
}

template <typename A>
__device__ __forceinline__ A zone_mix(A z, A prev, A fresh) {
  return z * prev + (A(1) - z) * fresh;
}

// gates::cell_backward with zoneout: dL/dc_s (dc, the carried gradient) reaches c~_s as
// (1 - z_c) of it plus dc_out (what the output and the norms sent back), and c_{s-1} as z_c
// of it besides f dL/dc~.  Gives the pre-activation gradients of i, f, g; returns dL/dc_{s-1}.
template <typename T, typename A>
__device__ __forceinline__ A zoned_cell_backward(const LayerParams& p, int64_t s, int64_t b, int64_t j, A dc, A dc_out,
                                                 A i, A f, A g, A c_prev, A& dpre_i, A& dpre_f, A& dpre_g) {
  const A z = p.zone_c ? zone_at<T>(p, p.zone_c, s, b, j, p.H) : A(0);
  A dc_prev;
  gates::cell_backward((A(1) - z) * dc + dc_out, i, f, g, c_prev, dpre_i, dpre_f, dpre_g, dc_prev);
  return dc_prev + z * dc;
}

// Shared-memory scratch of forward_units / backward_units, in accumulation-type elements.
__host__ __device__ inline int64_t units_scratch(int64_t U, int64_t B, bool bn) {
  return 16 * U + (bn ? 4 * U * B : 0);
}

// Where the masked h of the next step goes: up to two [B, ld] data buffers.
template <typename T>
struct HmOut {
  T* a;
  int64_t lda;
  T* b;
  int64_t ldb;
};

// The xp of row b, gate column k * H + j0 + u at step s, read from global memory (the
// per-step design; the persistent one reads it from its shared-memory stage).
template <typename T>
struct XpGlobal {
  const T* xp;
  Rows rows;
  int64_t s, B, H, j0;
  __device__ __forceinline__ typename Acc<T>::type operator()(int64_t b, int k, int u) const {
    return to_acc(xp[(rows.pos(b, s) * B + b) * 4 * H + k * H + j0 + u]);
  }
};

// ---- forward ------------------------------------------------------------------------------
// Gates, BN_h, cell update, BN_c and output of units [j0, j0 + U) for every row at step s.
// hh(b, k, u) returns (h_{s-1} * m_s) @ W_hh^T of row b, gate column k * H + j0 + u (acc);
// xq(b, k, u) the input projection xp of the same element (acc), for the rows running at s.
// Writes y (or hc with projection), h_state, the workspace, and h * m_{s+1} to hm_next.
// Zoneout: the state keeps z of its previous value (h here without projection; c in
// ws_c after BN_c and the output have read the fresh c~).
// sm: units_scratch(U, B, bn) acc elements of shared memory.
template <typename T, class HH, class XQ>
__device__ void forward_units(const LayerParams& p, int64_t s, int64_t j0, int U, HH hh, XQ xq,
                              typename Acc<T>::type* sm, HmOut<T> hm_next) {
  using A = typename Acc<T>::type;
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t B = p.B, H = p.H, G = 4 * H, R = p.R;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const int Uv = static_cast<int>(min(static_cast<int64_t>(U), H - j0));
  const int n = p.counts[s];
  const A inv_n = n > 0 ? A(1) / A(n) : A(0);
  const int64_t slot = min(p.step_offset + s, p.S - 1);
  A* mean_g = sm;
  A* rstd_g = sm + 4 * U;
  A* mean_c = sm + 8 * U;
  A* rstd_c = sm + 9 * U;

  T* y = static_cast<T*>(p.y);
  A* h_state = static_cast<A*>(p.h_state);
  A* act = static_cast<A*>(p.ws_act) + (p.save ? s : 0) * B * G;
  const A* c_prev = static_cast<A*>(p.ws_c) + (p.save ? s : (s & 1)) * B * H;
  A* c_new = static_cast<A*>(p.ws_c) + (p.save ? s + 1 : ((s + 1) & 1)) * B * H;
  A* hhat = p.bn ? static_cast<A*>(p.ws_hh_hat) + (p.save ? s : 0) * B * G : nullptr;
  T* hc = p.proj ? static_cast<T*>(p.ws_hc) + (p.save ? s : 0) * B * H : nullptr;
  const T* gamma_h = static_cast<const T*>(p.gamma_h);
  const T* gamma_c = static_cast<const T*>(p.gamma_c);
  const T* beta_c = static_cast<const T*>(p.beta_c);
  const T* mask_next = nullptr;
  if (p.mask && s + 1 < p.T)
    mask_next = static_cast<const T*>(p.mask) + (p.mask_per_step ? (s + 1) * B * R : 0);

  // h of row b, unit j at this step: emit it (and h * m_{s+1} for the next step's GEMM).
  auto emit = [&](int64_t b, int64_t j, A h) {
    if (hc) {
      hc[b * H + j] = from_acc<T>(h);
      return;
    }
    if (p.zone_h) h = zone_mix(zone_at<T>(p, p.zone_h, s, b, j, R), h_state[b * R + j], h);
    y[(rows.pos(b, s) * B + b) * R + j] = from_acc<T>(h);
    h_state[b * R + j] = h;
    const A hm = mask_next ? h * to_acc(mask_next[b * R + j]) : h;
    if (hm_next.a) hm_next.a[b * hm_next.lda + j] = from_acc<T>(hm);
    if (hm_next.b) hm_next.b[b * hm_next.ldb + j] = from_acc<T>(hm);
  };

  if (p.bn) {  // BN_h statistics of the 4U gate columns: one warp per column
    for (int c = warp; c < 4 * U; c += nwarps) {
      const int k = c / U, u = c % U;
      if (u >= Uv) continue;
      column_stats<T>(p, rows, s, slot, inv_n, lane, p.h_stats, p.run_mean_h, p.run_var_h, G, k * H + j0 + u,
                      [&](int64_t b) { return hh(b, k, u); }, mean_g + c, rstd_g + c);
    }
    __syncthreads();
  }

  for_units(B, U, Uv, j0, [&](int64_t b, int u, int64_t j) {
    if (!rows.active(b, s)) {  // finished row: carry the state, emit zeros
      c_new[b * H + j] = c_prev[b * H + j];
      for (int k = 0; k < 4; ++k) {
        act[b * G + k * H + j] = A(0);
        if (hhat) hhat[b * G + k * H + j] = A(0);
      }
      if (hc) {
        hc[b * H + j] = from_acc<T>(A(0));
      } else {
        y[(s * B + b) * R + j] = from_acc<T>(A(0));
        const A h = h_state[b * R + j];
        const A hm = mask_next ? h * to_acc(mask_next[b * R + j]) : h;
        if (hm_next.a) hm_next.a[b * hm_next.lda + j] = from_acc<T>(hm);
        if (hm_next.b) hm_next.b[b * hm_next.ldb + j] = from_acc<T>(hm);
      }
      return;
    }
    A pre[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      A v = hh(b, k, u);
      if (p.bn) {
        const A xhat = gates::bn_normalize(v, mean_g[k * U + u], rstd_g[k * U + u]);
        hhat[b * G + k * H + j] = xhat;
        v = to_acc(gamma_h[k * H + j]) * xhat;
      }
      pre[k] = xq(b, k, u) + v;
    }
    gates::activate(pre[0], pre[1], pre[2], pre[3]);
    const A c = gates::cell_update(pre[0], pre[1], pre[2], c_prev[b * H + j]);
#pragma unroll
    for (int k = 0; k < 4; ++k) act[b * G + k * H + j] = pre[k];
    if (!p.bn) {  // c is c~: the output reads it, the state keeps z of c_{s-1}
      c_new[b * H + j] = p.zone_c ? zone_mix(zone_at<T>(p, p.zone_c, s, b, j, H), c_prev[b * H + j], c) : c;
      A tc;
      emit(b, j, gates::hidden(pre[3], c, tc));
    } else {
      c_new[b * H + j] = c;  // c~ for BN_c's statistics; zoned after the output pass
    }
  });
  if (!p.bn) return;

  __syncthreads();  // c_new of every row written
  for (int u = warp; u < Uv; u += nwarps) {  // BN_c statistics: one warp per unit
    const int64_t j = j0 + u;
    column_stats<T>(p, rows, s, slot, inv_n, lane, p.c_stats, p.run_mean_c, p.run_var_c, H, j,
                    [&](int64_t b) { return c_new[b * H + j]; }, mean_c + u, rstd_c + u);
  }
  __syncthreads();
  for_units(B, U, Uv, j0, [&](int64_t b, int u, int64_t j) {
    if (!rows.active(b, s)) return;
    const A c_til = c_new[b * H + j];
    const A c_hat = gates::bn_normalize(c_til, mean_c[u], rstd_c[u]);
    A tc;
    emit(b, j, gates::hidden(act[b * G + 3 * H + j], to_acc(gamma_c[j]) * c_hat + to_acc(beta_c[j]), tc));
    if (p.zone_c) c_new[b * H + j] = zone_mix(zone_at<T>(p, p.zone_c, s, b, j, H), c_prev[b * H + j], c_til);
  });
}

// ---- backward -----------------------------------------------------------------------------
// The saved operands backward_units reads at step s for units [j0, j0 + U): the gate
// activations and the cell states c_{s-1}, c_s (acc type).  SavedGlobal reads the workspace
// in global memory; SavedStaged a shared-memory stage [B][6U] (per row the 4U activations,
// gate k of unit u at k * U + u, then U of c_{s-1}, then U of c_s).  Two types, not one with a
// flag: the per-step kernels keep their registers.
template <typename A>
struct SavedGlobal {  // the addresses from the kernel's parameters (no registers held for them)
  const LayerParams& p;
  int64_t s;
  __device__ __forceinline__ A gate(int64_t b, int k, int64_t j) const {
    return static_cast<const A*>(p.ws_act)[(s * p.B + b) * 4 * p.H + k * p.H + j];
  }
  __device__ __forceinline__ A c_before(int64_t b, int64_t j) const {
    return static_cast<const A*>(p.ws_c)[(s * p.B + b) * p.H + j];
  }
  __device__ __forceinline__ A c_after(int64_t b, int64_t j) const {
    return static_cast<const A*>(p.ws_c)[((s + 1) * p.B + b) * p.H + j];
  }
};

template <typename A>
__device__ __forceinline__ SavedGlobal<A> saved_global(const LayerParams& p, int64_t s) {
  return SavedGlobal<A>{p, s};
}

template <typename A>
struct SavedStaged {
  const A* stage;
  int64_t j0;
  int U;
  __device__ __forceinline__ A gate(int64_t b, int k, int64_t j) const { return stage[b * 6 * U + k * U + (j - j0)]; }
  __device__ __forceinline__ A c_before(int64_t b, int64_t j) const { return stage[b * 6 * U + 4 * U + (j - j0)]; }
  __device__ __forceinline__ A c_after(int64_t b, int64_t j) const { return stage[b * 6 * U + 5 * U + (j - j0)]; }
};

// Gate gradients of units [j0, j0 + U) for every row at step s (processing order, from
// T - 1 down).  sv: the step's saved operands (SavedGlobal or SavedStaged).  dh(b, j) returns dL/dh~ (the step's fresh output before the projection;
// with zoneout the caller has scaled it by 1 - z_h) of a running row.  Writes grad_xp[pos],
// dL/d(W_hh h) into dhh (data [B, G], and dhh_b if not null), updates dc_carry (zoneout:
// z_c of it passes to c_{s-1} directly) and the BN parameter gradients.
// sm: units_scratch(U, B, bn) acc elements.
template <typename T, class DH, class SV>
__device__ void backward_units(const LayerParams& p, const LayerGrads& g, int64_t s, int64_t j0,
                               int U, DH dh, const SV sv, typename Acc<T>::type* sm, T* dhh, T* dhh_b) {
  using A = typename Acc<T>::type;
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t B = p.B, H = p.H, G = 4 * H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const int Uv = static_cast<int>(min(static_cast<int64_t>(U), H - j0));
  const int n = p.counts[s];
  const A n_bn = p.bn_train ? A(n) : A(0);  // 0 selects the running-statistics formula
  const int64_t slot = min(p.step_offset + s, p.S - 1);
  A* rstd_g = sm;           // [4U]
  A* s1_g = sm + 4 * U;     // [4U]
  A* s2_g = sm + 8 * U;     // [4U]
  A* mean_c = sm + 12 * U;  // [U]
  A* rstd_c = sm + 13 * U;
  A* s1_c = sm + 14 * U;
  A* s2_c = sm + 15 * U;
  A* dpre_s = sm + 16 * U;  // [B][4U] (BN only)

  const A* hhat = p.bn ? static_cast<const A*>(p.ws_hh_hat) + s * B * G : nullptr;
  const T* gamma_h = static_cast<const T*>(p.gamma_h);
  const T* gamma_c = static_cast<const T*>(p.gamma_c);
  const T* beta_c = static_cast<const T*>(p.beta_c);
  T* grad_xp = static_cast<T*>(g.grad_xp);
  A* dc_carry = static_cast<A*>(g.dc_carry);
  // c~_s, what the output and BN_c saw: the saved state, or with zoneout recomputed from the
  // saved gates (the saved state is the zoned one)
  auto c_til = [&](int64_t b, int64_t j) -> A {
    if (!p.zone_c) return sv.c_after(b, j);
    return gates::cell_update(sv.gate(b, 0, j), sv.gate(b, 1, j), sv.gate(b, 2, j), sv.c_before(b, j));
  };

  if (p.bn) {  // statistics of this step; BN_c batch sums, one warp per unit
    for (int c = tid; c < 4 * U; c += blockDim.x) {
      const int k = c / U, u = c % U;
      if (u >= Uv) continue;
      const int64_t col = k * H + j0 + u;
      const A var = p.bn_train ? static_cast<const A*>(p.h_stats)[(s * 2 + 1) * G + col]
                               : to_acc(static_cast<const T*>(p.run_var_h)[slot * G + col]);
      rstd_g[c] = gates::rsqrt_(var + A(p.eps));
    }
    for (int u = warp; u < Uv; u += nwarps) {
      const int64_t j = j0 + u;
      const A mean = p.bn_train ? static_cast<const A*>(p.c_stats)[(s * 2) * H + j]
                                : to_acc(static_cast<const T*>(p.run_mean_c)[slot * H + j]);
      const A var = p.bn_train ? static_cast<const A*>(p.c_stats)[(s * 2 + 1) * H + j]
                               : to_acc(static_cast<const T*>(p.run_var_c)[slot * H + j]);
      const A rstd = gates::rsqrt_(var + A(p.eps));
      const A gc = to_acc(gamma_c[j]), bc = to_acc(beta_c[j]);
      A a1 = 0, a2 = 0, dg = 0, db = 0;
      for (int64_t b = lane; b < B; b += 32) {
        if (!rows.active(b, s)) continue;
        const A c_hat = gates::bn_normalize(c_til(b, j), mean, rstd);
        const A tc = gates::tanh_(gc * c_hat + bc);
        A dpre_o, dcn;
        gates::hidden_backward(dh(b, j), sv.gate(b, 3, j), tc, dpre_o, dcn);
        dg += dcn * c_hat;
        db += dcn;
        a1 += dcn * gc;
        a2 += dcn * gc * c_hat;
      }
      warp_sums(a1, a2, dg, db);
      if (lane == 0) {
        mean_c[u] = mean;
        rstd_c[u] = rstd;
        s1_c[u] = a1;
        s2_c[u] = a2;
        static_cast<A*>(g.dgamma_c)[j] += dg;
        static_cast<A*>(g.dbeta_c)[j] += db;
      }
    }
    __syncthreads();
  }

  for (int64_t e = tid; e < B * U; e += blockDim.x) {
    const int u = static_cast<int>(e % U);
    const int64_t b = e / U;
    if (u >= Uv) continue;
    const int64_t j = j0 + u;
    if (!rows.active(b, s)) {  // finished row: nothing flows into its gates
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        grad_xp[(s * B + b) * G + k * H + j] = from_acc<T>(A(0));
        dhh[b * G + k * H + j] = from_acc<T>(A(0));
        if (dhh_b) dhh_b[b * G + k * H + j] = from_acc<T>(A(0));
        if (p.bn) dpre_s[b * 4 * U + k * U + u] = A(0);
      }
      continue;
    }
    const A i = sv.gate(b, 0, j), f = sv.gate(b, 1, j), gg = sv.gate(b, 2, j), o = sv.gate(b, 3, j);
    A dpre[4], dc_h;
    if (p.bn) {
      const A c_hat = gates::bn_normalize(c_til(b, j), mean_c[u], rstd_c[u]);
      const A gc = to_acc(gamma_c[j]);
      const A tc = gates::tanh_(gc * c_hat + to_acc(beta_c[j]));
      A dcn;
      gates::hidden_backward(dh(b, j), o, tc, dpre[3], dcn);
      dc_h = gates::bn_backward(dcn * gc, c_hat, rstd_c[u], s1_c[u], s2_c[u], n_bn);
    } else {
      gates::hidden_backward(dh(b, j), o, gates::tanh_(c_til(b, j)), dpre[3], dc_h);
    }
    dc_carry[b * H + j] = zoned_cell_backward<T>(p, s, b, j, dc_carry[b * H + j], dc_h, i, f, gg, sv.c_before(b, j),
                                                 dpre[0], dpre[1], dpre[2]);
    T* gx = grad_xp + (rows.pos(b, s) * B + b) * G;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      gx[k * H + j] = from_acc<T>(dpre[k]);
      if (p.bn) {
        dpre_s[b * 4 * U + k * U + u] = dpre[k];
      } else {
        dhh[b * G + k * H + j] = from_acc<T>(dpre[k]);
        if (dhh_b) dhh_b[b * G + k * H + j] = from_acc<T>(dpre[k]);
      }
    }
  }
  if (!p.bn) return;

  __syncthreads();  // dpre of every row in shared memory
  for (int c = warp; c < 4 * U; c += nwarps) {  // BN_h: batch sums, one warp per column
    const int k = c / U, u = c % U;
    if (u >= Uv) continue;
    const int64_t col = k * H + j0 + u;
    const A gh = to_acc(gamma_h[col]);
    A a1 = 0, a2 = 0, dg = 0;
    for (int64_t b = lane; b < B; b += 32) {
      if (!rows.active(b, s)) continue;
      const A d = dpre_s[b * 4 * U + c];
      const A xhat = hhat[b * G + col];
      dg += d * xhat;
      a1 += d * gh;
      a2 += d * gh * xhat;
    }
    warp_sums(a1, a2, dg);
    if (lane == 0) {
      s1_g[c] = a1;
      s2_g[c] = a2;
      static_cast<A*>(g.dgamma_h)[col] += dg;
    }
  }
  __syncthreads();
  for (int64_t e = tid; e < B * 4 * U; e += blockDim.x) {
    const int c = static_cast<int>(e % (4 * U));
    const int64_t b = e / (4 * U);
    const int k = c / U, u = c % U;
    if (u >= Uv || !rows.active(b, s)) continue;
    const int64_t col = k * H + j0 + u;
    const A d = dpre_s[b * 4 * U + c];
    const A v = gates::bn_backward(d * to_acc(gamma_h[col]), hhat[b * G + col], rstd_g[c], s1_g[c],
                                   s2_g[c], n_bn);
    dhh[b * G + col] = from_acc<T>(v);
    if (dhh_b) dhh_b[b * G + col] = from_acc<T>(v);
  }
}

}  // namespace cuda
}  // namespace fusedrnn
