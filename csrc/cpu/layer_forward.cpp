// CPU forward of the layer recurrence op (fusedrnn::lstm_layer_forward).
//
// Dimension letters: T steps, B batch, H hidden, P projection, R = P or H (width of h),
// G = 4H gate columns (i, f, g, o), S running-statistics slots.  s is the step (processing
// order); t = pos(b, s) the time position it reads/writes (reversed per row in the reverse
// direction).
//
// float32 without a projection runs the fused step (fused_step.h): the GEMM and the pointwise
// work of a step in one kernel (batch norm's in one pass per unit block after its tiles), all
// steps in one parallel region; layer norm runs each row through the unfused forward's row
// kernels after the step's products (fused_row_steps).  Otherwise, per
// step: one GEMM (h_{s-1} * m) @ W_hh^T into a preallocated buffer, then one fused pointwise
// pass (N_h, gates, cell update, N_c, output, zoneout), parallel over hidden units with all
// batch rows in each chunk so the batch-norm reductions stay inside the chunk; layer norm
// normalises whole rows, so its N_h and N_c are passes parallel over rows.  With a projection
// a second GEMM per step.  No allocation inside the loop.  float32 and float64 (the
// accumulation type is the data type).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>

#include "../gates.h"
#include "../ops.h"
#include "fused_step.h"
#include "layer_rows.h"

namespace fusedrnn {
namespace {

using namespace cpu;  // layer_rows.h, rows.h, gemm.h

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

// What forward_pointwise reads and writes besides the parameters: the inputs, outputs and
// per-step scratch of one call, as raw pointers (set up by lstm_layer_forward_cpu).
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
  int64_t hh_hat_slots{};  // N_h's x_hat of step s at s % hh_hat_slots: T (saved), or 1 (a slot of scratch)
  // scratch
  T* h_cur{};  // [B, R]
  T* h_prev{}; // [B, R]  h_{s-1} (zoneout only: h_cur becomes h~ before zoneout mixes it back)
  T* hh{};     // [B, G]  GEMM output
  T* hp{};     // [B, P]  projection GEMM output
  T *mean_g{}, *rstd_g{}, *mean_c{}, *rstd_c{};  // per column of this step

  // Step s's [B, G] x_hat of N_h (n = B x G).
  T* hh_hat_at(int64_t s, int64_t n) const { return hh_hat + (s % hh_hat_slots) * n; }
  // Statistics scratch of one step, carved from st [2G + 2H].
  void set_scratch(T* st, int64_t G, int64_t H) { carve(carve(st, G, mean_g, rstd_g), H, mean_c, rstd_c); }
};

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
  T* hh_hat = (d.bn || d.ln) ? f.hh_hat_at(s, B * G) : nullptr;
  T* hc = d.proj ? f.hc + ws * B * H : nullptr;
  const int64_t n = rows.count(s);
  const T inv_n = n > 0 ? T(1) / T(n) : T(0);
  T* var_g = f.rstd_g;  // variance, then turned into rstd in place
  T* var_c = f.rstd_c;

  if (d.ln) ln_h_rows(rows, s, B, G, f.hh, f.gamma_h, hh_hat, f.h_stats + s * 2 * B, eps);

  at::parallel_for(0, H, grain_for(B), [&](int64_t j0, int64_t j1) {
    const int64_t w = j1 - j0;
    // ---- BN_h statistics of the four gate columns of units [j0, j1) ----
    if (d.bn)
      for (int k = 0; k < 4; ++k)
        bn_step_stats(rows, s, f.hh, G, k * H + j0, k * H + j1, bn_train, inv_n, f.h_stats, f.rm_h, f.rv_h, slot, eps,
                      f.mean_g, var_g, f.rstd_g);
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
    bn_step_stats(rows, s, c_new, H, j0, j1, bn_train, inv_n, f.c_stats, f.rm_c, f.rv_c, slot, eps, f.mean_c, var_c,
                  f.rstd_c);
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
void layer_forward(LayerCall& L, const at::Tensor& h0, FwdBuffers<T>& f, at::Tensor& hm_t, at::Tensor& hh_t,
                   at::Tensor& hc_t, at::Tensor& hp_t, int64_t step_offset, double eps) {
  const LayerDims& d = L.d;
  const Rows& rows = L.rows;
  const int64_t B = d.B, R = d.R, T_ = d.T, S = d.S;
  const bool bn_train = d.bn_train;
  std::memcpy(f.h_cur, h0.data_ptr<T>(), sizeof(T) * B * R);
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t ws = f.save ? s : 0;
    // masked h entering W_hh, for every row (inactive rows carry finite values)
    T* hm = f.hm + ws * B * R;
    if (f.mask) {
      const T* m = f.mask_at(s, B * R);
      for (int64_t k = 0; k < B * R; ++k) hm[k] = f.h_cur[k] * m[k];
    } else {
      std::memcpy(hm, f.h_cur, sizeof(T) * B * R);
    }
    if (f.zh.p) std::memcpy(f.h_prev, f.h_cur, sizeof(T) * B * R);
    at::Tensor hm_s = hm_t.select(0, ws);
    f.hh = L.gemm.hh->template run<T>(hm_s, hh_t);  // [B, R] @ W_hh^T
    const int64_t slot = std::min<int64_t>(step_offset + s, S - 1);
    forward_pointwise<T>(rows, d, f, s, bn_train, slot, eps);
    if (d.proj) {
      f.hp = L.gemm.hr->template run<T>(hc_t.select(0, ws), hp_t);  // [B, H] @ W_hr^T
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

// The forward by fused steps.  h_s and (with a mask, without a saved workspace) h_s * m_{s+1}
// alternate between two buffers each (a step reads all of one while it writes the other);
// h_alt and hm_alt are the second ones.  Returns the buffer holding h_{T-1}.  float32 only.
template <typename T>
const T* layer_forward_fused(const LayerCall&, const at::Tensor&, const FwdBuffers<T>&, T*, T*, int64_t, double) {
  TORCH_INTERNAL_ASSERT(false, "fusedrnn: the fused step takes float32");
}

template <>
const float* layer_forward_fused(const LayerCall& L, const at::Tensor& h0, const FwdBuffers<float>& f, float* h_alt,
                                 float* hm_alt, int64_t step_offset, double eps) {
  const LayerDims& d = L.d;
  const int64_t T_ = d.T, B = d.B, H = d.H, G = d.G, R = d.R;
  const at::Tensor panels = pack_gate_panels(L.t.w_hh, H);
  float* const h_slot[2] = {f.h_cur, h_alt};
  // Without a mask or a saved workspace the operand is h_{s-1} itself: no copy of it to write
  // (each write of a row the other threads have read costs a cross-core invalidation).
  const bool own_hm = f.save || f.mask;
  auto hm_of = [&](int64_t s) {
    return f.save ? f.hm + s * B * R : !f.mask ? h_slot[s & 1] : (s & 1) ? hm_alt : f.hm;
  };
  const float* h0p = h0.data_ptr<float>();
  std::memcpy(f.h_cur, h0p, sizeof(float) * B * R);
  float* hm0 = hm_of(0);
  const float* m0 = f.mask_at(0, B * R);
  if (own_hm)
    for (int64_t k = 0; k < B * R; ++k) hm0[k] = m0 ? h0p[k] * m0[k] : h0p[k];

  FusedBN bn;  // batch norm (the step's products in f.hh)
  if (d.bn) {
    bn.hh_hat = f.hh_hat_slots == T_ ? f.hh_hat : nullptr;  // (T = 1: its slot either way)
    bn.h_stats = f.h_stats;
    bn.c_stats = f.c_stats;
    bn.p = &f;
    bn.step_offset = step_offset;
    bn.S = d.S;
    bn.train = d.bn_train;
    bn.eps = static_cast<float>(eps);
  }
  FusedStep base;  // what every step shares
  base.bn = d.bn ? &bn : nullptr;
  base.hh = f.hh;
  base.panels = panels.data_ptr<float>();
  base.xp = f.xp;
  base.y = f.y;
  base.zc = f.zc;
  base.zh = f.zh;
  base.rows = &L.rows;
  base.B = B;
  base.H = H;
  base.K = R;
  auto step = [&](int64_t s) {
    const bool last = s + 1 == T_;
    FusedStep st = base;
    st.s = s;
    st.a = hm_of(s);
    st.c_prev = f.c + (f.save ? s : s & 1) * B * H;
    st.c_new = f.c + (f.save ? s + 1 : (s + 1) & 1) * B * H;
    st.h_prev = h_slot[s & 1];
    st.h_next = h_slot[(s + 1) & 1];
    st.hm_next = last || !own_hm ? nullptr : hm_of(s + 1);
    st.m_next = last ? nullptr : f.mask_at(s + 1, B * R);
    st.act = f.save ? f.act + s * B * G : nullptr;
    return st;
  };
  if (!d.ln) {
    fused_steps(T_, B, H, R, step);
    return h_slot[T_ & 1];
  }
  // layer norm, row by row after the row tile's products (the unfused forward's row kernels);
  // without a saved workspace the activations use its one slot, and x_hat without its own
  fused_row_steps(T_, B, H, R, step, [&](const FusedStep& st, int64_t b) {
    const int64_t s = st.s, ws = f.save ? s : 0;
    const Rows& rows = L.rows;
    float* hr = f.hh + b * G;
    float* ar = f.act + (ws * B + b) * G;
    float* xh = f.hh_hat_at(s, B * G) + b * G;
    float* sh = f.h_stats + s * 2 * B;
    float* sc = f.c_stats + s * 2 * B;
    if (!rows.active(b, s)) {  // finished row: carry the state, emit zeros
      std::memcpy(st.c_new + b * H, st.c_prev + b * H, sizeof(float) * H);
      std::memcpy(st.h_next + b * R, st.h_prev + b * R, sizeof(float) * R);
      std::fill_n(f.y + (s * B + b) * R, R, 0.0f);
      std::fill_n(ar, G, 0.0f);
      std::fill_n(xh, G, 0.0f);
      sh[b] = sh[B + b] = sc[b] = sc[B + b] = 0.0f;
    } else {
      ln_forward_row(hr, G, eps, f.gamma_h, xh, sh[b], sh[B + b]);
      fwd_gates_row<float, false>(f.xp + (rows.pos(b, s) * B + b) * G, hr, st.c_prev + b * H, st.c_new + b * H, ar,
                                  nullptr, H, 0, H);
      float* yr = f.y + (rows.pos(b, s) * B + b) * R;
      ln_c_forward_row(st.c_new + b * H, H, eps, f.gamma_c, f.beta_c, ar + 3 * H, yr, sc[b], sc[B + b]);
      if (f.zh.p) zoneout_row(f.zh, f.zh.row(s, b), st.h_prev + b * R, yr, 0, R);
      if (f.zc.p) zoneout_row(f.zc, f.zc.row(s, b), st.c_prev + b * H, st.c_new + b * H, 0, H);
      std::memcpy(st.h_next + b * R, yr, sizeof(float) * R);
    }
    for (int64_t j0 = 0; j0 < R; j0 += kLanes)
      next_operand(st, b, j0, std::min(kLanes, R - j0), st.h_next + b * R + j0);
  });
  return h_slot[T_ & 1];
}

}  // namespace

LayerForwardOut lstm_layer_forward_cpu(const at::Tensor& xp_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
                                       FUSEDRNN_LAYER_ARGS_DECL, int64_t save_workspace_in) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // inner GEMMs record no graph
  check_float(xp_in, "xp");
  check_dim(xp_in, 3, "xp");
  const bool save_workspace = cpu::saves_workspace(save_workspace_in);
  const LayerArgs a = FUSEDRNN_LAYER_ARGS;
  const LayerDims dims = check_layer_args(xp_in.size(0), xp_in.size(1), xp_in.size(2), xp_in, h0_in, c0_in, a);
  TORCH_CHECK(xp_in.scalar_type() == at::kFloat || xp_in.scalar_type() == at::kDouble,
              "fusedrnn: the native CPU layer kernel takes float32 or float64, got ",
              xp_in.scalar_type());
  const bool fused = use_fused_step(dims, xp_in.scalar_type());
  cpu::LayerCall L(dims, a, /*forward=*/true, /*with_hh=*/!fused);
  const LayerDims& d = L.d;
  const int64_t T_ = d.T, B = d.B, H = d.H, G = d.G, R = d.R;
  const bool bn_train = d.bn_train;
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
  const cpu::NormHStore hh_hat = cpu::forward_norm_h(d, save_workspace_in, opt);
  at::Tensor ws_hc = new_output({d.proj ? TW : 0, B, H}, opt);
  at::Tensor h_cur = at::empty({B, R}, opt), hh = at::empty({fused && !d.bn && !d.ln ? 0 : B, G}, opt);
  // the fused step's second buffers of h_s and (with a mask, without a saved workspace) of h_s * m_{s+1}
  at::Tensor h_alt = at::empty({fused ? B : 0, R}, opt);
  at::Tensor hm_alt = at::empty({fused && !save_workspace && d.mask ? B : 0, R}, opt);
  at::Tensor h_prev = at::empty({d.zoneout && !fused ? B : 0, R}, opt);  // (the fused step reads its h slots)
  at::Tensor hp = at::empty({d.proj ? B : 0, R}, opt);
  at::Tensor stat_scratch = at::empty({2 * G + 2 * H}, opt);
  ws_c.select(0, 0).copy_(c0);

  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "lstm_layer_forward_cpu", [&] {
    using T = scalar_t;
    FwdBuffers<T> f(d, L.t);
    cpu::bind<T>(f.xp, xp, f.y, y, f.h_stats, h_stats, f.c_stats, c_stats, f.hm, ws_hm, f.act, ws_act, f.c, ws_c,
                 f.hh_hat, hh_hat.buf, f.hc, ws_hc, f.h_cur, h_cur, f.h_prev, h_prev, f.hh, hh, f.hp, hp);
    f.save = save_workspace;
    f.hh_hat_slots = hh_hat.slots;
    f.set_scratch(stat_scratch.data_ptr<T>(), G, H);
    if (fused) {
      if (layer_forward_fused<T>(L, h0, f, h_alt.data_ptr<T>(), hm_alt.data_ptr<T>(), bn_step_offset, norm_eps) !=
          f.h_cur)
        h_cur = h_alt;
      return;
    }
    layer_forward<T>(L, h0, f, ws_hm, hh, ws_hc, hp, bn_step_offset, norm_eps);
  });
  h_n.copy_(h_cur);
  c_n.copy_(ws_c.select(0, save_workspace ? T_ : (T_ & 1)));
  return {y, h_n, c_n, h_stats, c_stats, ws_hm, ws_act, ws_c, hh_hat.out, ws_hc};
}

}  // namespace fusedrnn
