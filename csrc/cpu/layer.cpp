// CPU kernels of the layer recurrence op (fusedrnn::lstm_layer_forward / _backward).
//
// Dimension letters: T steps, B batch, H hidden, P projection, R = P or H (width of h),
// G = 4H gate columns (i, f, g, o), S running-statistics slots.  s is the step (processing
// order); t = pos(b, s) the time position it reads/writes (reversed per row in the reverse
// direction).
//
// Per step: one GEMM (h_{s-1} * m) @ W_hh^T into a preallocated buffer, then one fused
// pointwise pass (BN_h, gates, cell update, BN_c, output), parallel over hidden units with
// all batch rows in each chunk so the batch-norm reductions stay inside the chunk.  With a
// projection a second GEMM per step.  Backward mirrors it, one GEMM per step for dh, and
// the weight gradients are single GEMMs after the loop.  No allocation inside the loop.
// float32 and float64 (the accumulation type is the data type).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <tuple>

#include "../gates.h"
#include "../ops.h"
#include "gemm.h"
#include "rows.h"

namespace fusedrnn {
namespace {

using cpu::Rows;
using cpu::add_row;
using cpu::column_stats;
using cpu::grain_for;

// The parameters every pass reads: mask [B, R] or [T, B, R] (or null), batch-norm weights,
// running statistics (eval).
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

// The per-step GEMMs with W_hh and W_hr (packed once per call); forward multiplies by W^T.
struct LayerGemms {
  cpu::RepeatedGemm hh;
  std::optional<cpu::RepeatedGemm> hr;
  LayerGemms(const LayerDims& d, const LayerTensors& t, bool forward)
      : hh(t.w_hh, forward, d.B, d.T),
        hr(d.proj ? std::make_optional<cpu::RepeatedGemm>(*t.w_hr, forward, d.B, d.T) : std::nullopt) {}
};

template <typename T>
struct FwdBuffers : ParamPtrs<T> {
  using ParamPtrs<T>::ParamPtrs;
  // inputs
  const T* xp{};
  // outputs
  T* y{};
  T *h_stats{}, *c_stats{};  // [T, 2, G], [T, 2, H]
  T *hm{}, *act{}, *c{}, *hh_hat{}, *hc{};
  bool save{};  // workspace holds every step (else rolling slots)
  // scratch
  T* h_cur{};  // [B, R]
  T* h_prev{}; // [B, R]  h_{s-1} (zoneout only: h_cur becomes h~ before zoneout mixes it back)
  T* hh{};     // [B, G]  GEMM output
  T* hp{};     // [B, P]  projection GEMM output
  T *mean_g{}, *rstd_g{}, *mean_c{}, *rstd_c{};  // per column of this step

  // Statistics scratch of one step, carved from st [2G + 2H].
  void set_scratch(T* st, int64_t G, int64_t H) {
    mean_g = st;
    rstd_g = st + G;
    mean_c = st + 2 * G;
    rstd_c = st + 2 * G + H;
  }
};

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

// Gates and cell update of one row (pre-activation = xp + hh); with OUT also the output
// h = o * tanh(c) (without BN_c).  Pointers are offset to the row.
template <typename T, bool OUT>
FUSEDRNN_CPU_CLONES void fwd_gates_row(const T* __restrict xr, const T* __restrict hr,
                                       const T* __restrict c_prev, T* __restrict c_new,
                                       T* __restrict ar, T* __restrict h_out, int64_t H,
                                       int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    T pre[4];
    for (int k = 0; k < 4; ++k) pre[k] = xr[k * H + j] + hr[k * H + j];
    gates::activate(pre[0], pre[1], pre[2], pre[3]);
    const T c = gates::cell_update(pre[0], pre[1], pre[2], c_prev[j]);
    for (int k = 0; k < 4; ++k) ar[k * H + j] = pre[k];
    c_new[j] = c;
    if constexpr (OUT) {
      T tc;
      h_out[j] = gates::hidden(pre[3], c, tc);
    }
  }
}

// Output of one row under BN_c: h = o * tanh(gamma_c * c_hat + beta_c).
template <typename T>
FUSEDRNN_CPU_CLONES void fwd_bn_c_row(const T* __restrict c, const T* __restrict mean,
                                      const T* __restrict rstd, const T* __restrict gamma,
                                      const T* __restrict beta, const T* __restrict o,
                                      T* __restrict h_out, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const T c_hat = gates::bn_normalize(c[j], mean[j], rstd[j]);
    T tc;
    h_out[j] = gates::hidden(o[j], gamma[j] * c_hat + beta[j], tc);
  }
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

// Zoneout of the cell state, units [j0, j1) of every active row: c_s = zc c_{s-1} + (1 - zc) c~_s
// (c_new holds c~_s on entry, the state on exit).
template <typename T>
void zoneout_c(const Rows& rows, const FwdBuffers<T>& f, int64_t s, const T* c_prev, T* c_new, int64_t j0,
               int64_t j1) {
  const int64_t B = f.zc.B, H = f.zc.W;
  for (int64_t b = 0; b < B; ++b)
    if (rows.active(b, s)) zoneout_row(f.zc, f.zc.row(s, b), c_prev + b * H, c_new + b * H, j0, j1);
}

template <typename T>
void forward_pointwise(const Rows& rows, const LayerDims& d, const FwdBuffers<T>& f, int64_t s,
                       bool bn_train, int64_t slot, double eps) {
  const int64_t B = d.B, H = d.H, G = d.G, R = d.R;
  const int64_t ws = f.save ? s : 0;           // workspace slot of this step
  const int64_t wc0 = f.save ? s : (s & 1);    // cell slots: c_{s-1}, c_s
  const int64_t wc1 = f.save ? s + 1 : ((s + 1) & 1);
  const T* c_prev = f.c + wc0 * B * H;
  T* c_new = f.c + wc1 * B * H;
  T* act = f.act + ws * B * G;
  T* hh_hat = (d.bn || d.ln) ? f.hh_hat + ws * B * G : nullptr;
  T* hc = d.proj ? f.hc + ws * B * H : nullptr;
  const int64_t n = rows.count(s);
  const T inv_n = n > 0 ? T(1) / T(n) : T(0);
  T* var_g = f.rstd_g;  // variance, then turned into rstd in place
  T* var_c = f.rstd_c;

  if (d.ln) {  // LN_h: each active row of hh over its G columns (rows in parallel)
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* st = f.h_stats + s * 2 * B;  // [2, B]: mean, rstd (0 for a finished row)
        if (!rows.active(b, s)) {
          st[b] = st[B + b] = T(0);
          continue;
        }
        ln_forward_row(f.hh + b * G, G, eps, f.gamma_h, hh_hat + b * G, st[b], st[B + b]);
      }
    });
  }

  at::parallel_for(0, H, grain_for(B), [&](int64_t j0, int64_t j1) {
    const int64_t w = j1 - j0;
    // ---- BN_h statistics of the four gate columns of units [j0, j1) ----
    if (d.bn) {
      for (int k = 0; k < 4; ++k) {
        const int64_t c0 = k * H + j0;
        if (bn_train) {
          column_stats(rows, s, f.hh, G, c0, c0 + w, inv_n, f.mean_g, var_g);
          std::memcpy(f.h_stats + (s * 2) * G + c0, f.mean_g + c0, sizeof(T) * w);
          std::memcpy(f.h_stats + (s * 2 + 1) * G + c0, var_g + c0, sizeof(T) * w);
        } else {
          std::memcpy(f.mean_g + c0, f.rm_h + slot * G + c0, sizeof(T) * w);
          std::memcpy(var_g + c0, f.rv_h + slot * G + c0, sizeof(T) * w);
        }
        for (int64_t c = c0; c < c0 + w; ++c) f.rstd_g[c] = gates::rsqrt_(var_g[c] + T(eps));
      }
    }
    // ---- gates and cell update ----
    for (int64_t b = 0; b < B; ++b) {
      if (!rows.active(b, s)) {  // finished row: carry the state, emit zeros
        std::memcpy(c_new + b * H + j0, c_prev + b * H + j0, sizeof(T) * w);
        for (int k = 0; k < 4; ++k) {
          std::fill_n(act + b * G + k * H + j0, w, T(0));
          if (hh_hat) std::fill_n(hh_hat + b * G + k * H + j0, w, T(0));
        }
        if (hc) std::fill_n(hc + b * H + j0, w, T(0));
        else std::fill_n(f.y + (s * B + b) * R + j0, w, T(0));
        continue;
      }
      const T* xr = f.xp + (rows.pos(b, s) * B + b) * G;
      T* h_out = hc ? hc + b * H : f.h_cur + b * R;
      if (d.bn || d.ln) {  // (LN_h already applied to the whole row)
        if (d.bn)
          for (int k = 0; k < 4; ++k)
            fwd_bn_h_cols(f.hh + b * G, f.gamma_h, f.mean_g, f.rstd_g, hh_hat + b * G, k * H + j0,
                          k * H + j1);
        fwd_gates_row<T, false>(xr, f.hh + b * G, c_prev + b * H, c_new + b * H, act + b * G,
                                nullptr, H, j0, j1);
      } else {
        fwd_gates_row<T, true>(xr, f.hh + b * G, c_prev + b * H, c_new + b * H, act + b * G,
                               h_out, H, j0, j1);
        if (!hc) {
          if (f.zh.p) zoneout_row(f.zh, f.zh.row(s, b), f.h_prev + b * R, h_out, j0, j1);
          std::memcpy(f.y + (rows.pos(b, s) * B + b) * R + j0, h_out + j0, sizeof(T) * w);
        }
      }
    }
    if (d.ln) return;  // LN_c and the output: a row pass below
    if (!d.bn) {
      if (f.zc.p) zoneout_c(rows, f, s, c_prev, c_new, j0, j1);
      return;
    }
    // ---- BN_c statistics, then the output ----
    if (bn_train) {
      column_stats(rows, s, c_new, H, j0, j1, inv_n, f.mean_c, var_c);
      std::memcpy(f.c_stats + (s * 2) * H + j0, f.mean_c + j0, sizeof(T) * w);
      std::memcpy(f.c_stats + (s * 2 + 1) * H + j0, var_c + j0, sizeof(T) * w);
    } else {
      std::memcpy(f.mean_c + j0, f.rm_c + slot * H + j0, sizeof(T) * w);
      std::memcpy(var_c + j0, f.rv_c + slot * H + j0, sizeof(T) * w);
    }
    for (int64_t j = j0; j < j1; ++j) f.rstd_c[j] = gates::rsqrt_(var_c[j] + T(eps));
    for (int64_t b = 0; b < B; ++b) {
      if (!rows.active(b, s)) continue;
      T* h_out = hc ? hc + b * H : f.h_cur + b * R;
      fwd_bn_c_row(c_new + b * H, f.mean_c, f.rstd_c, f.gamma_c, f.beta_c, act + b * G + 3 * H, h_out,
                   j0, j1);
      if (!hc) {
        if (f.zh.p) zoneout_row(f.zh, f.zh.row(s, b), f.h_prev + b * R, h_out, j0, j1);
        std::memcpy(f.y + (rows.pos(b, s) * B + b) * R + j0, h_out + j0, sizeof(T) * w);
      }
    }
    if (f.zc.p) zoneout_c(rows, f, s, c_prev, c_new, j0, j1);  // after BN_c read c~
  });
  if (!d.ln) return;
  // ---- LN_c of each active row of c~ over its H columns, the output, zoneout ----
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* st = f.c_stats + s * 2 * B;
      if (!rows.active(b, s)) {
        st[b] = st[B + b] = T(0);
        continue;
      }
      T* h_out = hc ? hc + b * H : f.h_cur + b * R;
      ln_c_forward_row(c_new + b * H, H, eps, f.gamma_c, f.beta_c, act + b * G + 3 * H, h_out, st[b], st[B + b]);
      if (!hc) {
        if (f.zh.p) zoneout_row(f.zh, f.zh.row(s, b), f.h_prev + b * R, h_out, 0, R);
        std::memcpy(f.y + (rows.pos(b, s) * B + b) * R, h_out, sizeof(T) * R);
      }
      if (f.zc.p) zoneout_row(f.zc, f.zc.row(s, b), c_prev + b * H, c_new + b * H, 0, H);
    }
  });
}

template <typename T>
void layer_forward(const LayerDims& d, const Rows& rows, cpu::RepeatedGemm& gemm_hh,
                   cpu::RepeatedGemm* gemm_hr, const at::Tensor& h0, FwdBuffers<T>& f,
                   at::Tensor& hm_t,
                   at::Tensor& hh_t, at::Tensor& hc_t, at::Tensor& hp_t, bool bn_train,
                   int64_t step_offset, int64_t S, double eps) {
  const int64_t B = d.B, R = d.R, T_ = d.T;
  std::memcpy(f.h_cur, h0.data_ptr<T>(), sizeof(T) * B * R);
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t ws = f.save ? s : 0;
    // masked h entering W_hh, for every row (inactive rows carry finite values)
    T* hm = f.hm + ws * B * R;
    if (f.mask) {
      const T* m = f.mask + (f.mask_per_step ? s * B * R : 0);
      for (int64_t k = 0; k < B * R; ++k) hm[k] = f.h_cur[k] * m[k];
    } else {
      std::memcpy(hm, f.h_cur, sizeof(T) * B * R);
    }
    if (f.zh.p) std::memcpy(f.h_prev, f.h_cur, sizeof(T) * B * R);
    at::Tensor hm_s = hm_t.select(0, ws);
    f.hh = gemm_hh.template run<T>(hm_s, hh_t);  // [B, R] @ W_hh^T
    const int64_t slot = std::min<int64_t>(step_offset + s, S - 1);
    forward_pointwise<T>(rows, d, f, s, bn_train, slot, eps);
    if (d.proj) {
      f.hp = gemm_hr->template run<T>(hc_t.select(0, ws), hp_t);  // [B, H] @ W_hr^T
      for (int64_t b = 0; b < B; ++b) {
        if (rows.active(b, s)) {
          T* yr = f.y + (rows.pos(b, s) * B + b) * R;
          if (f.zh.p) zoneout_row(f.zh, f.zh.row(s, b), f.h_prev + b * R, f.hp + b * R, 0, R);
          for (int64_t p = 0; p < R; ++p) yr[p] = f.h_cur[b * R + p] = f.hp[b * R + p];
        } else {
          T* yr = f.y + (s * B + b) * R;
          for (int64_t p = 0; p < R; ++p) yr[p] = T(0);
        }
      }
    }
  }
}

}  // namespace

LayerForwardOut lstm_layer_forward_cpu(const at::Tensor& xp_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
                                       FUSEDRNN_LAYER_ARGS_DECL, bool save_workspace) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // inner GEMMs record no graph
  check_float(xp_in, "xp");
  check_dim(xp_in, 3, "xp");
  const LayerDims d = check_layer_args(xp_in.size(0), xp_in.size(1), xp_in.size(2), xp_in, h0_in, c0_in,
                                       FUSEDRNN_LAYER_ARGS);
  TORCH_CHECK(xp_in.scalar_type() == at::kFloat || xp_in.scalar_type() == at::kDouble,
              "fusedrnn: the native CPU layer kernel takes float32 or float64, got ",
              xp_in.scalar_type());
  const int64_t T_ = d.T, B = d.B, H = d.H, G = d.G, R = d.R, S = d.S;
  const bool bn_train = d.bn_train;
  const std::vector<int64_t> len = lengths_vector(lengths, B, T_);
  const Rows rows{len, T_, B, reverse};
  const at::Tensor xp = xp_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const at::TensorOptions opt = xp.options();
  const int64_t TW = save_workspace ? T_ : 1;  // workspace steps kept

  at::Tensor y = new_output({T_, B, R}, opt);
  at::Tensor h_n = new_output({B, R}, opt);
  at::Tensor c_n = new_output({B, H}, opt);
  // batch norm in training: per-step column statistics [T, 2, G] / [T, 2, H] (mean, biased var);
  // layer norm: per-step row statistics [T, 2, B] (mean, rstd) of LN_h and LN_c
  at::Tensor h_stats = new_output({(bn_train || d.ln) ? T_ : 0, 2, d.ln ? B : G}, opt);
  at::Tensor c_stats = new_output({(bn_train || d.ln) ? T_ : 0, 2, d.ln ? B : H}, opt);
  at::Tensor ws_hm = new_output({TW, B, R}, opt);
  at::Tensor ws_act = new_output({TW, B, G}, opt);
  at::Tensor ws_c = new_output({save_workspace ? T_ + 1 : 2, B, H}, opt);
  at::Tensor ws_hh_hat = new_output({(d.bn || d.ln) ? TW : 0, B, G}, opt);
  at::Tensor ws_hc = new_output({d.proj ? TW : 0, B, H}, opt);
  at::Tensor h_cur = at::empty({B, R}, opt), hh = at::empty({B, G}, opt);
  at::Tensor h_prev = at::empty({d.zoneout ? B : 0, R}, opt);
  at::Tensor hp = at::empty({d.proj ? B : 0, R}, opt);
  at::Tensor stat_scratch = at::empty({2 * G + 2 * H}, opt);
  ws_c.select(0, 0).copy_(c0);

  const LayerTensors pt(d, FUSEDRNN_LAYER_ARGS);
  LayerGemms gemm(d, pt, /*forward=*/true);

  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "lstm_layer_forward_cpu", [&] {
    using T = scalar_t;
    FwdBuffers<T> f(d, pt);
    f.xp = xp.data_ptr<T>();
    f.y = y.data_ptr<T>();
    f.h_stats = h_stats.data_ptr<T>();
    f.c_stats = c_stats.data_ptr<T>();
    f.hm = ws_hm.data_ptr<T>();
    f.act = ws_act.data_ptr<T>();
    f.c = ws_c.data_ptr<T>();
    f.hh_hat = ws_hh_hat.data_ptr<T>();
    f.hc = ws_hc.data_ptr<T>();
    f.save = save_workspace;
    f.h_cur = h_cur.data_ptr<T>();
    f.h_prev = h_prev.data_ptr<T>();
    f.hh = hh.data_ptr<T>();
    f.hp = hp.data_ptr<T>();
    f.set_scratch(stat_scratch.data_ptr<T>(), G, H);
    layer_forward<T>(d, rows, gemm.hh, d.proj ? &*gemm.hr : nullptr, h0, f, ws_hm, hh, ws_hc, hp,
                     bn_train, bn_step_offset, S, norm_eps);
  });
  h_n.copy_(h_cur);
  c_n.copy_(ws_c.select(0, save_workspace ? T_ : (T_ & 1)));
  return {y, h_n, c_n, h_stats, c_stats, ws_hm, ws_act, ws_c, ws_hh_hat, ws_hc};
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

namespace {

template <typename T>
struct BwdBuffers : ParamPtrs<T> {
  using ParamPtrs<T>::ParamPtrs;
  const T* grad_y{};
  const T *h_stats{}, *c_stats{};          // train statistics
  const T *act{}, *c{}, *hh_hat{};           // workspace
  T* grad_xp{};                          // [T, B, G]
  T* dhh{};                              // [slots, B, G]: step s at s % slots (may alias grad_xp)
  int64_t dhh_slots{};
  T* dh_all{};                           // [T, B, P] (proj only)
  T *dgamma_h{}, *dgamma_c{}, *dbeta_c{};
  T* dh_carry{};  // [B, R]
  T* dc_carry{};  // [B, H]
  T* dh_cur{};    // [B, R]
  T* dhc{};       // [B, H] gradient of h before projection (aliases dh_cur without proj)
  T* dh_rec{};    // [B, R] GEMM output
  T* dh_zone{};   // [B, R] zoneout: zh * dL/dh_s, the part that reaches h_{s-1} directly
  T* dc_zone{};   // [B, H] zoneout: zc * dL/dc_s, the part that reaches c_{s-1} directly
  T* c_til{};     // [B, H] zoneout or layer norm: the candidate c~_s, recomputed from the gates and c_{s-1}
  T *ln_do{}, *ln_dy{}, *ln_chat{}, *ln_dc{};  // [B, H] each, layer norm: dL/dpre_o, dL/d(LN_c out), c_hat, dL/dc~
  T *mean_g{}, *rstd_g{}, *mean_c{}, *rstd_c{}, *sum1_g{}, *sum2_g{}, *sum1_c{}, *sum2_c{};  // scratch

  // Statistics and batch-sum scratch of one step, carved from st [4G + 4H].
  void set_scratch(T* st, int64_t G, int64_t H) {
    T* g[4] = {st, st + G, st + 2 * G, st + 3 * G};
    T* c[4] = {st + 4 * G, st + 4 * G + H, st + 4 * G + 2 * H, st + 4 * G + 3 * H};
    mean_g = g[0], rstd_g = g[1], sum1_g = g[2], sum2_g = g[3];
    mean_c = c[0], rstd_c = c[1], sum1_c = c[2], sum2_c = c[3];
  }
};

// BN_c backward, first pass over one active row: accumulates dgamma_c, dbeta_c and the batch
// sums s1 = sum(dxhat), s2 = sum(dxhat * c_hat) with dxhat = dL/dc_hat * gamma_c.
template <typename T>
FUSEDRNN_CPU_CLONES void bwd_bn_c_sums_row(const T* __restrict c, const T* __restrict mean,
                                           const T* __restrict rstd, const T* __restrict gamma,
                                           const T* __restrict beta, const T* __restrict o,
                                           const T* __restrict dh, T* __restrict dgamma,
                                           T* __restrict dbeta, T* __restrict s1,
                                           T* __restrict s2, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const T c_hat = gates::bn_normalize(c[j], mean[j], rstd[j]);
    const T tc = gates::tanh_(gamma[j] * c_hat + beta[j]);
    T dpre_o, dcn;
    gates::hidden_backward(dh[j], o[j], tc, dpre_o, dcn);
    dgamma[j] += dcn * c_hat;
    dbeta[j] += dcn;
    const T dxhat = dcn * gamma[j];
    s1[j] += dxhat;
    s2[j] += dxhat * c_hat;
  }
}

// Gate gradients of one active row (units [j0, j1)): writes dL/dxp (gx) and, with
// COPY_DHH, the same into dhh; updates dc_carry.  BN selects the BN_c formula for dL/dc.
template <typename T, bool BN, bool COPY_DHH>
FUSEDRNN_CPU_CLONES void bwd_gates_row(
    const T* __restrict ar, const T* __restrict c_prev, const T* __restrict c_cur,
    const T* __restrict dh, T* __restrict dc_carry, T* __restrict gx, T* __restrict dhh,
    const T* __restrict mean_c, const T* __restrict rstd_c, const T* __restrict gamma_c,
    const T* __restrict beta_c, const T* __restrict s1c, const T* __restrict s2c, T n_bn,
    int64_t H, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const T i = ar[j], fg = ar[H + j], g = ar[2 * H + j], o = ar[3 * H + j];
    T dpre[4], dc_h, dc_prev;
    if constexpr (BN) {
      const T c_hat = gates::bn_normalize(c_cur[j], mean_c[j], rstd_c[j]);
      const T tc = gates::tanh_(gamma_c[j] * c_hat + beta_c[j]);
      T dcn;
      gates::hidden_backward(dh[j], o, tc, dpre[3], dcn);
      dc_h = gates::bn_backward(dcn * gamma_c[j], c_hat, rstd_c[j], s1c[j], s2c[j], n_bn);
    } else {
      gates::hidden_backward(dh[j], o, gates::tanh_(c_cur[j]), dpre[3], dc_h);
    }
    gates::cell_backward(dc_carry[j] + dc_h, i, fg, g, c_prev[j], dpre[0], dpre[1], dpre[2], dc_prev);
    dc_carry[j] = dc_prev;
    for (int k = 0; k < 4; ++k) gx[k * H + j] = dpre[k];
    if constexpr (COPY_DHH)
      for (int k = 0; k < 4; ++k) dhh[k * H + j] = dpre[k];
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

// LN_c and the output, backward, for one active row: c~ recomputed from the gates, then
// dL/dpre_o, dL/d(LN_c out), c_hat and dL/dc~ (through the row's statistics).
template <typename T>
FUSEDRNN_CPU_CLONES void bwd_ln_c_row(const T* __restrict ar, const T* __restrict c_prev, const T* __restrict dh,
                                      const T* __restrict gamma, const T* __restrict beta, T mean, T rstd,
                                      T* __restrict c_til, T* __restrict d_o, T* __restrict dy,
                                      T* __restrict chat, T* __restrict dc, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T ct = gates::cell_update(ar[j], ar[H + j], ar[2 * H + j], c_prev[j]);
    const T ch = (ct - mean) * rstd;
    const T tc = gates::tanh_(gamma[j] * ch + beta[j]);
    T dpre_o, dyj;
    gates::hidden_backward(dh[j], ar[3 * H + j], tc, dpre_o, dyj);
    c_til[j] = ct;
    d_o[j] = dpre_o;
    dy[j] = dyj;
    chat[j] = ch;
  }
  ln_backward_row(dy, gamma, chat, rstd, H, dc);
}

// Gate gradients of one active row under layer norm (units [j0, j1)): dL/dpre_o and the
// output's dL/dc~ come from bwd_ln_c_row; accumulates LN_c's parameter gradients.
template <typename T>
FUSEDRNN_CPU_CLONES void bwd_gates_row_ln(const T* __restrict ar, const T* __restrict c_prev,
                                          const T* __restrict d_o, const T* __restrict dc_out,
                                          const T* __restrict dy, const T* __restrict chat,
                                          T* __restrict dc_carry, T* __restrict gx, T* __restrict dgamma_c,
                                          T* __restrict dbeta_c, int64_t H, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    T dpre[3], dc_prev;
    gates::cell_backward(dc_carry[j] + dc_out[j], ar[j], ar[H + j], ar[2 * H + j], c_prev[j], dpre[0], dpre[1],
                         dpre[2], dc_prev);
    dc_carry[j] = dc_prev;
    for (int q = 0; q < 3; ++q) gx[q * H + j] = dpre[q];
    gx[3 * H + j] = d_o[j];
    dgamma_c[j] += dy[j] * chat[j];
    dbeta_c[j] += dy[j];
  }
}

// acc[c] += a[c] * b[c] over [c0, c1).
template <typename T>
FUSEDRNN_CPU_CLONES void add_product(const T* __restrict a, const T* __restrict b, T* __restrict acc, int64_t c0,
                                     int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) acc[c] += a[c] * b[c];
}

template <typename T>
void backward_pointwise(const Rows& rows, const LayerDims& d, const BwdBuffers<T>& f, int64_t s,
                        bool bn_train, int64_t slot, double eps) {
  const int64_t B = d.B, H = d.H, G = d.G;
  const T* act = f.act + s * B * G;
  const T* c_prev = f.c + s * B * H;
  // with zoneout the output and the gates saw the candidate c~_s, not the state c_s
  const T* c_cur = f.zc.p ? f.c_til : f.c + (s + 1) * B * H;
  const T* hh_hat = (d.bn || d.ln) ? f.hh_hat + s * B * G : nullptr;
  T* dhh = f.dhh + (s % f.dhh_slots) * B * G;
  const bool copy_dhh = f.dhh != f.grad_xp;
  const int64_t n = rows.count(s);
  const T n_bn = bn_train ? T(n) : T(0);  // 0 selects the eval formula in bn_backward

  if (d.ln) {  // LN_c and the output, backward, one active row at a time (rows in parallel)
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (!rows.active(b, s)) continue;
        const int64_t k0 = b * H;
        bwd_ln_c_row(act + b * G, c_prev + k0, f.dhc + k0, f.gamma_c, f.beta_c, f.c_stats[s * 2 * B + b],
                     f.c_stats[s * 2 * B + B + b], f.c_til + k0, f.ln_do + k0, f.ln_dy + k0, f.ln_chat + k0,
                     f.ln_dc + k0, H);
      }
    });
  }

  at::parallel_for(0, H, grain_for(B), [&](int64_t j0, int64_t j1) {
    const int64_t w = j1 - j0;
    if (f.zc.p) {  // c~_s, and dL/dc_s split into its zoned-out part and the candidate's
      for (int64_t b = 0; b < B; ++b) {
        if (!rows.active(b, s)) continue;
        const int64_t k0 = b * H;
        if (!d.ln) cell_candidates(act + b * G, c_prev + k0, f.c_til + k0, H, j0, j1);  // (LN's row pass did)
        zoneout_split(f.zc, f.zc.row(s, b), f.dc_carry + k0, f.dc_zone + k0, j0, j1);
      }
    }
    if (d.bn) {  // statistics of this step; zeroed batch sums
      for (int k = 0; k < 4; ++k)
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t col = k * H + j;
          const T var = bn_train ? f.h_stats[(s * 2 + 1) * G + col] : f.rv_h[slot * G + col];
          f.rstd_g[col] = gates::rsqrt_(var + T(eps));
          f.sum1_g[col] = f.sum2_g[col] = T(0);
        }
      for (int64_t j = j0; j < j1; ++j) {
        f.mean_c[j] = bn_train ? f.c_stats[(s * 2) * H + j] : f.rm_c[slot * H + j];
        const T var_c = bn_train ? f.c_stats[(s * 2 + 1) * H + j] : f.rv_c[slot * H + j];
        f.rstd_c[j] = gates::rsqrt_(var_c + T(eps));
        f.sum1_c[j] = f.sum2_c[j] = T(0);
      }
      for (int64_t b = 0; b < B; ++b) {
        if (!rows.active(b, s)) continue;
        bwd_bn_c_sums_row(c_cur + b * H, f.mean_c, f.rstd_c, f.gamma_c, f.beta_c,
                          act + b * G + 3 * H, f.dhc + b * H, f.dgamma_c, f.dbeta_c, f.sum1_c,
                          f.sum2_c, j0, j1);
      }
    }
    for (int64_t b = 0; b < B; ++b) {
      if (!rows.active(b, s)) {  // finished row: nothing flows into its gates
        for (int k = 0; k < 4; ++k) {
          std::fill_n(f.grad_xp + (s * B + b) * G + k * H + j0, w, T(0));
          if (copy_dhh) std::fill_n(dhh + b * G + k * H + j0, w, T(0));
        }
        continue;
      }
      T* gx = f.grad_xp + (rows.pos(b, s) * B + b) * G;
      if (d.ln) {  // the gates from LN_c's backward; the parameter gradients of this chunk's columns
        const int64_t k0 = b * H;
        bwd_gates_row_ln(act + b * G, c_prev + k0, f.ln_do + k0, f.ln_dc + k0, f.ln_dy + k0, f.ln_chat + k0,
                         f.dc_carry + k0, gx, f.dgamma_c, f.dbeta_c, H, j0, j1);
        for (int q = 0; q < 4; ++q) add_product(gx, hh_hat + b * G, f.dgamma_h, q * H + j0, q * H + j1);
        if (f.zc.p)
          for (int64_t j = j0; j < j1; ++j) f.dc_carry[k0 + j] += f.dc_zone[k0 + j];
        continue;
      }
      const auto args = std::make_tuple(act + b * G, c_prev + b * H, c_cur + b * H, f.dhc + b * H,
                                        f.dc_carry + b * H, gx, dhh + b * G, f.mean_c, f.rstd_c,
                                        f.gamma_c, f.beta_c, f.sum1_c, f.sum2_c, n_bn, H, j0, j1);
      if (d.bn) std::apply(bwd_gates_row<T, true, false>, args);
      else if (copy_dhh) std::apply(bwd_gates_row<T, false, true>, args);
      else std::apply(bwd_gates_row<T, false, false>, args);
      if (f.zc.p)
        for (int64_t j = j0; j < j1; ++j) f.dc_carry[b * H + j] += f.dc_zone[b * H + j];
      if (d.bn) {
        for (int k = 0; k < 4; ++k) {
          const auto cols = std::make_tuple(gx, hh_hat + b * G, f.gamma_h, f.rstd_g, f.dgamma_h,
                                            f.sum1_g, f.sum2_g, dhh + b * G, k * H + j0, k * H + j1);
          if (bn_train) std::apply(bwd_bn_h_cols<T, true>, cols);
          else std::apply(bwd_bn_h_cols<T, false>, cols);
        }
      }
    }
    if (bn_train) {  // BN_h backward through the batch statistics
      for (int64_t b = 0; b < B; ++b) {
        if (!rows.active(b, s)) continue;
        const T* gx = f.grad_xp + (rows.pos(b, s) * B + b) * G;
        for (int k = 0; k < 4; ++k)
          bwd_bn_h_row(gx, f.gamma_h, hh_hat + b * G, f.rstd_g, f.sum1_g, f.sum2_g, dhh + b * G,
                       T(n), k * H + j0, k * H + j1);
      }
    }
  });
  if (!d.ln) return;
  // LN_h backward: dL/dhh of each active row from dL/d(LN_h out) = dL/dxp over its G columns
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (!rows.active(b, s)) continue;
      ln_backward_row(f.grad_xp + (rows.pos(b, s) * B + b) * G, f.gamma_h, hh_hat + b * G,
                      f.h_stats[s * 2 * B + B + b], G, dhh + b * G);
    }
  });
}

}  // namespace

LayerBackwardOut lstm_layer_backward_cpu(const at::Tensor& grad_y_in, const at::Tensor& grad_h_n,
                                         const at::Tensor& grad_c_n, FUSEDRNN_LAYER_ARGS_DECL,
                                         const at::Tensor& h_stats_in, const at::Tensor& c_stats_in,
                                         const at::Tensor& ws_hm, const at::Tensor& ws_act, const at::Tensor& ws_c,
                                         const at::Tensor& ws_hh_hat, const at::Tensor& ws_hc) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // inner GEMMs record no graph
  TORCH_CHECK(grad_y_in.dim() == 3, "fusedrnn: grad_y must be [T, B, R]");
  const int64_t T_ = grad_y_in.size(0), B = grad_y_in.size(1);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % 4 == 0, "fusedrnn: w_hh must be [4H, R]");
  const LayerDims d = check_layer_args(T_, B, w_hh.size(0), grad_y_in, grad_h_n, grad_c_n, FUSEDRNN_LAYER_ARGS);
  TORCH_CHECK(grad_y_in.size(2) == d.R, "fusedrnn: grad_y must have shape [", T_, ", ", B, ", ",
              d.R, "], got ", grad_y_in.sizes());
  const int64_t G = d.G, H = d.H, R = d.R, P = d.P, S = d.S;
  const bool bn_train = d.bn_train;
  TORCH_CHECK(ws_act.dim() == 3 && ws_act.size(0) == T_ && ws_c.size(0) == T_ + 1 &&
                  ws_hm.size(0) == T_,
              "fusedrnn: lstm_layer_backward needs the full workspace (save_workspace=True)");
  const std::vector<int64_t> len = lengths_vector(lengths, B, T_);
  const Rows rows{len, T_, B, reverse};
  const at::TensorOptions opt = grad_y_in.options();
  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor act = ws_act.contiguous(), c = ws_c.contiguous(), hm = ws_hm.contiguous();
  const at::Tensor hh_hat = ws_hh_hat.contiguous(), hc = ws_hc.contiguous();
  const at::Tensor h_stats = h_stats_in.contiguous(), c_stats = c_stats_in.contiguous();
  const LayerTensors pt(d, FUSEDRNN_LAYER_ARGS);

  at::Tensor grad_xp = new_output({T_, B, G}, opt);
  // Without BN_h, lengths or reversal, dL/dhh of step s is grad_xp[s]: no second buffer, and
  // dW_hh is one GEMM after the loop.  Otherwise dL/dhh lives in a ring of `slots` steps and
  // dW_hh accumulates one GEMM per chunk of steps (rows >= 512 keep the GEMM efficient), so
  // the backward holds no second [T, B, G] buffer.
  const bool alias = !d.bn && !d.ln && !d.lengths && !reverse;
  const int64_t slots = alias ? std::max<int64_t>(T_, 1) : std::min<int64_t>(std::max<int64_t>(T_, 1),
                                                                               std::max<int64_t>(16, (511 + B) / std::max<int64_t>(B, 1)));
  at::Tensor dhh = alias ? grad_xp : at::empty({slots, B, G}, opt);
  at::Tensor grad_w_hh = at::empty({G, R}, opt);
  bool w_hh_written = false;
  at::Tensor dh_all = at::empty({d.proj ? T_ : 0, B, R}, opt);
  at::Tensor dh_carry = grad_h_n.to(opt).contiguous().clone();
  at::Tensor dc_carry = grad_c_n.to(opt).contiguous().clone();
  at::Tensor dh_cur = at::empty({B, R}, opt), dh_rec = at::empty({B, R}, opt);
  at::Tensor dhc = d.proj ? at::empty({B, H}, opt) : dh_cur;
  const bool norm = d.bn || d.ln;
  at::Tensor dgamma_h = at::zeros({norm ? G : 0}, opt), dgamma_c = at::zeros({norm ? H : 0}, opt);
  at::Tensor dbeta_c = at::zeros({norm ? H : 0}, opt);
  at::Tensor scratch = at::empty({4 * G + 4 * H}, opt);
  at::Tensor zone = at::empty({(d.zoneout || d.ln) ? B * (R + 2 * H) : 0}, opt);  // dh_zone, dc_zone, c_til
  at::Tensor ln_scratch = at::empty({d.ln ? 4 * B * H : 0}, opt);
  LayerGemms gemm(d, pt, /*forward=*/false);

  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "lstm_layer_backward_cpu", [&] {
    using T = scalar_t;
    BwdBuffers<T> f(d, pt);
    f.grad_y = grad_y.data_ptr<T>();
    f.h_stats = (bn_train || d.ln) ? h_stats.data_ptr<T>() : nullptr;
    f.c_stats = (bn_train || d.ln) ? c_stats.data_ptr<T>() : nullptr;
    f.act = act.data_ptr<T>();
    f.c = c.data_ptr<T>();
    f.hh_hat = (d.bn || d.ln) ? hh_hat.data_ptr<T>() : nullptr;
    f.grad_xp = grad_xp.data_ptr<T>();
    f.dhh = dhh.data_ptr<T>();
    f.dhh_slots = slots;
    f.dh_all = dh_all.data_ptr<T>();
    f.dgamma_h = dgamma_h.data_ptr<T>();
    f.dgamma_c = dgamma_c.data_ptr<T>();
    f.dbeta_c = dbeta_c.data_ptr<T>();
    f.dh_carry = dh_carry.data_ptr<T>();
    f.dc_carry = dc_carry.data_ptr<T>();
    f.dh_cur = dh_cur.data_ptr<T>();
    f.dhc = dhc.data_ptr<T>();
    f.dh_rec = dh_rec.data_ptr<T>();
    if (d.zoneout || d.ln) {
      f.dh_zone = zone.data_ptr<T>();
      f.dc_zone = f.dh_zone + B * R;
      f.c_til = f.dc_zone + B * H;
    }
    if (d.ln) {
      f.ln_do = ln_scratch.data_ptr<T>();
      f.ln_dy = f.ln_do + B * H;
      f.ln_chat = f.ln_dy + B * H;
      f.ln_dc = f.ln_chat + B * H;
    }
    f.set_scratch(scratch.data_ptr<T>(), G, H);

    for (int64_t s = T_ - 1; s >= 0; --s) {
      // dL/dh_s: from the output at this step plus what flows back from step s + 1
      for (int64_t b = 0; b < B; ++b) {
        T* dst = f.dh_cur + b * R;
        if (rows.active(b, s)) {
          const T* gy = f.grad_y + (rows.pos(b, s) * B + b) * R;
          for (int64_t r = 0; r < R; ++r) dst[r] = gy[r] + f.dh_carry[b * R + r];
          if (f.zh.p) zoneout_split(f.zh, f.zh.row(s, b), dst, f.dh_zone + b * R, 0, R);  // h_s = zh h_{s-1} + ...
        } else {
          for (int64_t r = 0; r < R; ++r) dst[r] = T(0);
        }
      }
      if (d.proj) {
        std::memcpy(f.dh_all + s * B * R, f.dh_cur, sizeof(T) * B * R);
        f.dhc = gemm.hr->template run<T>(dh_cur, dhc);  // [B, P] @ W_hr
      }
      const int64_t slot = std::min<int64_t>(bn_step_offset + s, S - 1);
      backward_pointwise<T>(rows, d, f, s, bn_train, slot, norm_eps);
      f.dh_rec = gemm.hh.template run<T>(dhh.select(0, s % slots), dh_rec);  // [B, G] @ W_hh
      if (!alias && s % slots == 0) {  // the chunk [s, s + n) is complete: dW_hh += dhh^T hm
        const int64_t n = std::min<int64_t>(slots, T_ - s);
        cpu::matmul(dhh.narrow(0, 0, n).view({n * B, G}).t(), hm.narrow(0, s, n).view({n * B, R}), grad_w_hh,
                    /*accumulate=*/w_hh_written);
        w_hh_written = true;
      }
      const T* m = f.mask ? f.mask + (f.mask_per_step ? s * B * R : 0) : nullptr;
      for (int64_t b = 0; b < B; ++b) {
        if (!rows.active(b, s)) continue;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t k = b * R + r;
          f.dh_carry[k] = m ? f.dh_rec[k] * m[k] : f.dh_rec[k];
        }
        if (f.zh.p)
          for (int64_t r = 0; r < R; ++r) f.dh_carry[b * R + r] += f.dh_zone[b * R + r];
      }
    }
  });

  if (alias) {
    cpu::matmul(dhh.view({T_ * B, G}).t(), hm.view({T_ * B, R}), grad_w_hh);
  } else if (!w_hh_written) {
    grad_w_hh.zero_();
  }
  at::Tensor grad_w_hr = d.proj ? cpu::matmul(dh_all.view({T_ * B, P}).t(), hc.view({T_ * B, H}))
                                : at::empty({0}, opt);
  return {grad_xp, dh_carry, dc_carry, grad_w_hh, grad_w_hr, dgamma_h, dgamma_c, dbeta_c};
}

}  // namespace fusedrnn
