// The pieces both directions of the CPU layer op share (layer_forward.cpp, layer_backward.cpp):
// the set-up of a call (LayerCall) and of its per-step buffers (ParamPtrs, bind, carve), the
// zoneout, layer-norm and row-reduction helpers of one batch row, and the recompute mode's
// rebuilding of N_h's x_hat.
//
// Dimension letters: T steps, B batch, H hidden, P projection, R = P or H (width of h),
// G = 4H gate columns (i, f, g, o), W the width of a zoned state (H for c, R for h).  s is the
// step (processing order).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "../common.h"
#include "../gates.h"
#include "../ops.h"
#include "gemm.h"
#include "rows.h"

namespace fusedrnn {
namespace cpu {

// A zoneout weight [T, B, W] (W = H for c, R for h): its element (s, b, j), or one rate for
// all (eval mode's expanded scalar).
template <typename T>
struct ZoneoutWeight {
  const T* p{};
  bool scalar{};
  int64_t B{}, W{};
  ZoneoutWeight() = default;
  ZoneoutWeight(const OptT& t, int64_t B_, int64_t W_) : B(B_), W(W_) {
    if (!t.has_value() || t->numel() == 0) return;
    p = t->data_ptr<T>();
    scalar = is_broadcast_scalar(*t);
  }
  const T* row(int64_t s, int64_t b) const { return scalar ? p : p + (s * B + b) * W; }
};

// The parameters every pass reads: mask [B, R] or [T, B, R] (or null), the norm weights
// (norm_h_weight, norm_c_weight, norm_c_bias: batch or layer norm), running statistics (eval-mode
// batch norm), zoneout weights.
template <typename T>
struct ParamPtrs {
  const T* mask;
  bool mask_per_step;
  const T *gamma_h, *gamma_c, *beta_c;
  const T *rm_h, *rv_h, *rm_c, *rv_c;
  ZoneoutWeight<T> zc, zh;  // zoneout weights of c_{s-1} and h_{s-1} (p null without zoneout)

  ParamPtrs(const LayerDims& d, const LayerTensors& t)
      : mask(ptr(t.mask)), mask_per_step(d.mask_per_step), gamma_h(ptr(t.norm_h_weight)),
        gamma_c(ptr(t.norm_c_weight)), beta_c(ptr(t.norm_c_bias)), rm_h(ptr(t.rm_h)), rv_h(ptr(t.rv_h)),
        rm_c(ptr(t.rm_c)), rv_c(ptr(t.rv_c)), zc(t.zoneout_c, d.B, d.H), zh(t.zoneout_h, d.B, d.R) {}
  static const T* ptr(const OptT& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }
  // The mask of step s (n = its B x width elements), or null without one.
  const T* mask_at(int64_t s, int64_t n) const { return mask ? mask + (mask_per_step ? s * n : 0) : nullptr; }
};

// Zoneout of one row, columns [j0, j1): v = z * prev + (1 - z) * v (v holds the candidate on
// entry); z[j], or one rate z[0] (SCALAR).
template <typename T, bool SCALAR>
FUSEDRNN_CPU_CLONES void zoneout_mix(const T* __restrict z, const T* __restrict prev, T* __restrict v, int64_t j0,
                                     int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const T w = SCALAR ? z[0] : z[j];
    v[j] = w * prev[j] + (T(1) - w) * v[j];
  }
}

template <typename T>
void zoneout_row(const ZoneoutWeight<T>& z, const T* zr, const T* prev, T* v, int64_t j0, int64_t j1) {
  if (z.scalar) zoneout_mix<T, true>(zr, prev, v, j0, j1);
  else zoneout_mix<T, false>(zr, prev, v, j0, j1);
}

// Backward of zoneout_mix on a gradient g (dL/d state), columns [j0, j1): keep = z * g (what
// reaches the previous state directly), g *= 1 - z (what reaches the candidate).
template <typename T, bool SCALAR>
FUSEDRNN_CPU_CLONES void zoneout_split_(const T* __restrict z, T* __restrict g, T* __restrict keep, int64_t j0,
                                        int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const T w = SCALAR ? z[0] : z[j];
    keep[j] = w * g[j];
    g[j] *= T(1) - w;
  }
}

template <typename T>
void zoneout_split(const ZoneoutWeight<T>& z, const T* zr, T* g, T* keep, int64_t j0, int64_t j1) {
  if (z.scalar) zoneout_split_<T, true>(zr, g, keep, j0, j1);
  else zoneout_split_<T, false>(zr, g, keep, j0, j1);
}

// The candidate cell state c~ = f c_{s-1} + i g of one row, columns [j0, j1), from the saved
// activations ar [G] (i, f, g, o).
template <typename T>
FUSEDRNN_CPU_CLONES void cell_candidates(const T* __restrict ar, const T* __restrict c_prev, T* __restrict c_til,
                                         int64_t H, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) c_til[j] = gates::cell_update(ar[j], ar[H + j], ar[2 * H + j], c_prev[j]);
}

// ---- batch norm of N_h, both cells (columns of one row) ----

// Batch-norm statistics of the columns [c0, c1) of a [B, W] matrix v at step s: in training
// over the rows active at s (inv_n = 1 / their count), saved into stats [T, 2, W] (mean,
// biased var); in eval the running statistics' slot (rm, rv [S, W]).  rstd = 1 / sqrt(var +
// eps); var may alias rstd.
template <typename T>
void bn_step_stats(const Rows& rows, int64_t s, const T* v, int64_t W, int64_t c0, int64_t c1, bool train, T inv_n,
                   T* stats, const T* rm, const T* rv, int64_t slot, double eps, T* mean, T* var, T* rstd) {
  const size_t bytes = sizeof(T) * (c1 - c0);
  if (train) {
    column_stats(rows, s, v, W, c0, c1, inv_n, mean, var);
    std::memcpy(stats + (s * 2) * W + c0, mean + c0, bytes);
    std::memcpy(stats + (s * 2 + 1) * W + c0, var + c0, bytes);
  } else {
    std::memcpy(mean + c0, rm + slot * W + c0, bytes);
    std::memcpy(var + c0, rv + slot * W + c0, bytes);
  }
  for (int64_t c = c0; c < c1; ++c) rstd[c] = gates::rsqrt_(var[c] + T(eps));
}

// Batch norm's backward set-up of the columns [c0, c1) of a W-wide feature at step s: rstd
// from the variance the forward used (the step's batch variance in training, stats [T, 2, W];
// else the running variance's slot, rv [S, W]) and zeroed batch sums s1, s2.
template <typename T>
void bn_backward_setup(int64_t s, int64_t W, int64_t c0, int64_t c1, bool train, const T* stats, const T* rv,
                       int64_t slot, double eps, T* rstd, T* s1, T* s2) {
  for (int64_t c = c0; c < c1; ++c) {
    const T var = train ? stats[(s * 2 + 1) * W + c] : rv[slot * W + c];
    rstd[c] = gates::rsqrt_(var + T(eps));
    s1[c] = s2[c] = T(0);
  }
}

// BN_h of one row, columns [c0, c1): saves x_hat and rewrites hh in place to gamma * x_hat.
template <typename T>
FUSEDRNN_CPU_CLONES void fwd_bn_h_cols(T* __restrict hh, const T* __restrict gamma,
                                       const T* __restrict mean, const T* __restrict rstd,
                                       T* __restrict hhat, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    const T xhat = gates::bn_normalize(hh[c], mean[c], rstd[c]);
    hhat[c] = xhat;
    hh[c] = gamma[c] * xhat;
  }
}

// BN_h backward, first pass over the columns [c0, c1) of one active row: dgamma_h and, in
// training, the batch sums s1 = sum(dxhat), s2 = sum(dxhat * x_hat); with running
// statistics (eval) directly dL/dhh = dxhat * rstd.
template <typename T, bool TRAIN>
FUSEDRNN_CPU_CLONES void bwd_bn_h_cols(const T* __restrict gx, const T* __restrict hhat,
                                       const T* __restrict gamma, const T* __restrict rstd,
                                       T* __restrict dgamma, T* __restrict s1, T* __restrict s2,
                                       T* __restrict dhh, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    const T dxhat = gx[c] * gamma[c];
    dgamma[c] += gx[c] * hhat[c];
    if constexpr (TRAIN) {
      s1[c] += dxhat;
      s2[c] += dxhat * hhat[c];
    } else {
      dhh[c] = dxhat * rstd[c];
    }
  }
}

// BN_h backward through the batch statistics, one active row, columns [c0, c1).
template <typename T>
FUSEDRNN_CPU_CLONES void bwd_bn_h_row(const T* __restrict gx, const T* __restrict gamma,
                                      const T* __restrict hhat, const T* __restrict rstd,
                                      const T* __restrict s1, const T* __restrict s2,
                                      T* __restrict dhh, T n, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c)
    dhh[c] = gates::bn_backward(gx[c] * gamma[c], hhat[c], rstd[c], s1[c], s2[c], n);
}

// acc[c] += a[c] * b[c] over [c0, c1).
template <typename T>
FUSEDRNN_CPU_CLONES void add_product(const T* __restrict a, const T* __restrict b, T* __restrict acc, int64_t c0,
                                     int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) acc[c] += a[c] * b[c];
}

// The per-step GEMMs with W_hh and W_hr (packed once per call); forward multiplies by W^T.
// Without hh when the caller multiplies by W_hh itself (the fused step, fused_step.h).
struct LayerGemms {
  std::optional<RepeatedGemm> hh, hr;
  LayerGemms(const LayerDims& d, const LayerTensors& t, bool forward, bool with_hh)
      : hh(with_hh ? std::make_optional<RepeatedGemm>(t.w_hh, forward, d.B, d.T) : std::nullopt),
        hr(d.proj ? std::make_optional<RepeatedGemm>(*t.w_hr, forward, d.B, d.T) : std::nullopt) {}
};

// What the forward and the backward both set up: the checked sizes, the rows running at each
// step, the contiguous parameters and the per-step GEMMs with W_hh and W_hr.
struct LayerCall {
  const LayerDims d;
  const std::vector<int64_t> len;
  const Rows rows;
  const LayerTensors t;
  LayerGemms gemm;
  LayerCall(const LayerDims& dims, const LayerArgs& a, bool forward, bool with_hh = true)
      : d(dims), len(lengths_vector(a.lengths, d.B, d.T)), rows{len, d.T, d.B, d.reverse}, t(d, a),
        gemm(d, t, forward, with_hh) {}
  LayerCall(const LayerCall&) = delete;  // rows refers to len
};

// Points each buffer field at its tensor's data, in pairs: bind<T>(f.y, y, f.act, act, ...).
// A field is T* or const T*.
template <typename T, typename P, typename... Rest>
void bind(P*& field, const at::Tensor& t, Rest&&... rest) {
  field = t.data_ptr<T>();
  if constexpr (sizeof...(Rest) > 0) bind<T>(std::forward<Rest>(rest)...);
}

// Carves consecutive slices of n elements from base into parts; returns the end of the last.
template <typename T, typename... Parts>
T* carve(T* base, int64_t n, Parts&... parts) {
  ((parts = base, base += n), ...);
  return base;
}

// Row reductions with eight independent partial sums (a single running sum is one long chain
// of dependent adds, which the compiler may not reorder; eight chains vectorise).
template <typename T>
FUSEDRNN_CPU_CLONES T row_sum(const T* __restrict v, int64_t n) {
  T acc[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int k = 0; k < 8; ++k) acc[k] += v[c + k];
  T s = 0;
  for (; c < n; ++c) s += v[c];
  for (int k = 0; k < 8; ++k) s += acc[k];
  return s;
}

template <typename T>
FUSEDRNN_CPU_CLONES T row_sq_dev(const T* __restrict v, int64_t n, T mean) {
  T acc[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int k = 0; k < 8; ++k) acc[k] += (v[c + k] - mean) * (v[c + k] - mean);
  T s = 0;
  for (; c < n; ++c) s += (v[c] - mean) * (v[c] - mean);
  for (int k = 0; k < 8; ++k) s += acc[k];
  return s;
}

// s1 = sum(g * w), s2 = sum(g * w * x) over a row (layer norm's backward sums).
template <typename T>
FUSEDRNN_CPU_CLONES void row_ln_sums(const T* __restrict g, const T* __restrict w, const T* __restrict x,
                                     int64_t n, T& s1, T& s2) {
  T a1[8] = {}, a2[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int k = 0; k < 8; ++k) {
      const T d = g[c + k] * w[c + k];
      a1[k] += d;
      a2[k] += d * x[c + k];
    }
  s1 = s2 = 0;
  for (; c < n; ++c) {
    const T d = g[c] * w[c];
    s1 += d;
    s2 += d * x[c];
  }
  for (int k = 0; k < 8; ++k) {
    s1 += a1[k];
    s2 += a2[k];
  }
}

// The mean and 1 / sqrt(biased variance + eps) of one row v [n] (layer norm's statistics).
template <typename T>
void row_moments(const T* v, int64_t n, double eps, T& mean, T& rstd) {
  mean = row_sum(v, n) / T(n);
  rstd = gates::rsqrt_(row_sq_dev(v, n, mean) / T(n) + T(eps));
}

// Layer norm's backward of one row: out = rstd * (g w - mean(g w) - x_hat mean(g w x_hat)),
// the gradient of the normalised input from g = dL/d(w * x_hat + bias).
template <typename T>
FUSEDRNN_CPU_CLONES void ln_backward_row(const T* __restrict g, const T* __restrict w, const T* __restrict xhat,
                                         T rstd, int64_t n, T* __restrict out) {
  T m1, m2;
  row_ln_sums(g, w, xhat, n, m1, m2);
  m1 /= T(n);
  m2 /= T(n);
  for (int64_t c = 0; c < n; ++c) out[c] = rstd * (g[c] * w[c] - m1 - xhat[c] * m2);
}

// Layer norm of one row v [n] (biased variance): saves x_hat, rewrites v to gamma * x_hat, and
// returns the row's mean and rstd.
template <typename T>
FUSEDRNN_CPU_CLONES void ln_forward_row(T* __restrict v, int64_t n, double eps, const T* __restrict gamma,
                                        T* __restrict xhat, T& mean_out, T& rstd_out) {
  T mean, rstd;
  row_moments(v, n, eps, mean, rstd);
  for (int64_t c = 0; c < n; ++c) {
    const T x = (v[c] - mean) * rstd;
    xhat[c] = x;
    v[c] = gamma[c] * x;
  }
  mean_out = mean;
  rstd_out = rstd;
}

// LN_h of step s (both cells): each active row of hh [B, G] over its G columns, rows in
// parallel; x_hat to hh_hat, hh rewritten to gamma * x_hat, the row statistics to st [2, B]
// (mean, rstd; 0 for a finished row).
template <typename T>
void ln_h_rows(const Rows& rows, int64_t s, int64_t B, int64_t G, T* hh, const T* gamma, T* hh_hat, T* st,
               double eps) {
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (!rows.active(b, s)) {
        st[b] = st[B + b] = T(0);
        continue;
      }
      ln_forward_row(hh + b * G, G, eps, gamma, hh_hat + b * G, st[b], st[B + b]);
    }
  });
}

// LN_c of one row and the output h = o * tanh(gamma_c * c_hat + beta_c) (c~ unchanged).
template <typename T>
FUSEDRNN_CPU_CLONES void ln_c_forward_row(const T* __restrict c, int64_t H, double eps, const T* __restrict gamma,
                                          const T* __restrict beta, const T* __restrict o, T* __restrict h_out,
                                          T& mean_out, T& rstd_out) {
  T mean, rstd;
  row_moments(c, H, eps, mean, rstd);
  for (int64_t j = 0; j < H; ++j) {
    T tc;
    h_out[j] = gates::hidden(o[j], gamma[j] * ((c[j] - mean) * rstd) + beta[j], tc);
  }
  mean_out = mean;
  rstd_out = rstd;
}


// ---- the recompute mode (both cells) ----

// The forward's save_workspace (kSave*), checked; whether it saves the workspace.
inline bool saves_workspace(int64_t save_workspace) {
  TORCH_CHECK(save_workspace >= kSaveNone && save_workspace <= kSaveRecomputeNorm,
              "fusedrnn: save_workspace must be 0 (nothing), 1 (the workspace) or 2 (all but N_h's output), got ",
              save_workspace);
  return save_workspace != kSaveNone;
}

// Where a layer op (either cell) keeps N_h's x_hat [slots, B, G], step s at s % slots.
struct NormHStore {
  at::Tensor buf;  // empty without a norm
  int64_t slots;
  at::Tensor out;        // forward: the op's ws_hh_hat (buf, or empty in the recompute mode)
  bool recompute{};      // backward: buf is a ring that recompute_norm_h fills per chunk
};

// The forward's: every step's x_hat when it saves the workspace, else one step's slot (no
// backward follows, or the recompute mode, whose ws_hh_hat is returned empty).
inline NormHStore forward_norm_h(const LayerDims& d, int64_t save_workspace, const at::TensorOptions& opt) {
  const int64_t steps = save_workspace == kSaveAll ? d.T : 1;
  at::Tensor buf = new_output({d.bn || d.ln ? steps : 0, d.B, d.G}, opt);
  return {buf, std::max<int64_t>(steps, 1),
          save_workspace == kSaveRecomputeNorm ? new_output({0, d.B, d.G}, opt) : buf};
}

// The backward's: the forward's ws_hh_hat, which must hold every step's x_hat under a norm, or
// (the recompute mode: saved empty) a ring of ring_slots steps, the backward's chunk.
inline NormHStore backward_norm_h(const LayerDims& d, const at::Tensor& ws_hh_hat, int64_t ring_slots,
                                  const at::TensorOptions& opt) {
  const bool norm = d.bn || d.ln, recompute = norm && d.T > 0 && ws_hh_hat.size(0) == 0;
  TORCH_CHECK(!norm || recompute || (ws_hh_hat.dim() == 3 && ws_hh_hat.size(0) == d.T),
              "fusedrnn: ws_hh_hat must hold every step's x_hat of N_h, or none (recomputed), got ",
              ws_hh_hat.sizes());
  if (recompute) return {new_output({ring_slots, d.B, d.G}, opt), ring_slots, {}, true};
  return {ws_hh_hat.contiguous(), std::max<int64_t>(d.T, 1), {}, false};
}

// N_h's x_hat of the steps [lo, hi], rebuilt for the backward when the forward left ws_hh_hat
// empty: into ring [slots, B, G] at s - lo (lo a multiple of slots, hi - lo < slots), one
// GEMM of the chunk's saved operands hm[lo..hi] [n, B, R] by W_hh^T ([G, R]), then the
// forward's normalisation with what it used: batch norm in training the step's batch mean and
// variance (h_stats [T, 2, G]), in eval the running statistics' slot (rm_h, rv_h [S, G]),
// layer norm each row's mean and rstd (h_stats [T, 2, B]).  Finished rows get finite values
// that nothing reads.
template <typename T>
void recompute_norm_h(const LayerDims& d, const T* h_stats, const T* rm_h, const T* rv_h, const at::Tensor& hm,
                      const at::Tensor& w_hh, at::Tensor& ring, int64_t lo, int64_t hi, int64_t step_offset,
                      double eps) {
  const int64_t B = d.B, G = d.G, n = hi + 1 - lo;
  at::Tensor out = ring.narrow(0, 0, n).view({n * B, G});
  matmul(hm.narrow(0, lo, n).view({n * B, hm.size(2)}), w_hh.t(), out);
  T* v = out.data_ptr<T>();
  at::parallel_for(lo, hi + 1, 1, [&](int64_t s0, int64_t s1) {
    std::vector<T> rstd(d.ln ? 0 : G);
    for (int64_t s = s0; s < s1; ++s) {
      T* step = v + (s - lo) * B * G;
      if (d.ln) {
        const T* st = h_stats + s * 2 * B;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = 0; j < G; ++j) step[b * G + j] = gates::bn_normalize(step[b * G + j], st[b], st[B + b]);
        continue;
      }
      const int64_t slot = std::min<int64_t>(step_offset + s, d.S - 1);
      const T* mean = d.bn_train ? h_stats + s * 2 * G : rm_h + slot * G;
      const T* var = d.bn_train ? mean + G : rv_h + slot * G;
      for (int64_t j = 0; j < G; ++j) rstd[j] = gates::rsqrt_(var[j] + T(eps));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < G; ++j) step[b * G + j] = gates::bn_normalize(step[b * G + j], mean[j], rstd[j]);
    }
  });
}

}  // namespace cpu
}  // namespace fusedrnn
