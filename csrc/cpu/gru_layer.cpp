// CPU forward and backward of the GRU's layer recurrence op (fusedrnn::gru_layer_forward /
// _backward).
//
// Dimension letters: T steps, B batch, H hidden, G = 3H gate columns (r, z, n, torch's order),
// S running-statistics slots.  s is the step (processing order); t = pos(b, s) the time
// position it reads/writes (reversed per row in the reverse direction).
//
// The LSTM's layer op (layer_forward.cpp, layer_backward.cpp) with the GRU's cell: per step one
// GEMM (h_{s-1} * m_s) @ W_hh^T, then one fused pointwise pass parallel over hidden units with
// every batch row in each chunk (so batch norm's column reductions stay in the chunk): N_h, the
// bias b_hh, the gates, the update, zoneout.  Layer norm normalises whole rows: its LN_h is a
// pass parallel over rows before the gates.  The backward mirrors it: the gate gradients, N_h's
// backward, one GEMM for dL/dh, and dW_hh accumulated per chunk of steps from a ring of dL/dhh.
// No allocation inside the loop.  float32 and float64 (the accumulation type is the data type).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>

#include "../gates.h"
#include "../ops.h"
#include "layer_rows.h"

namespace fusedrnn {
namespace {

using namespace cpu;  // layer_rows.h, rows.h, gemm.h

// Gates and update of one active row, units [j0, j1): from the input parts xr [G] and the
// recurrent parts hg [G] (N_h(W_hh h), before b_hh [G]: zeros without a bias), the gates ar [G]
// (r, z, n), the reset product's operand hn [H] and the new state h_new [H].  One pointer per
// gate block and no branch in the loop, so that it vectorises.
template <typename T>
FUSEDRNN_CPU_CLONES void gru_gates_row(const T* __restrict xr, const T* __restrict hg, const T* __restrict b_hh,
                                       const T* __restrict h_prev, T* __restrict ar, T* __restrict hn,
                                       T* __restrict h_new, int64_t H, int64_t j0, int64_t j1) {
  const T *xz = xr + H, *xn = xr + 2 * H, *hz = hg + H, *hgn = hg + 2 * H;
  const T *bz = b_hh + H, *bn = b_hh + 2 * H;
  T *az = ar + H, *an = ar + 2 * H;
  for (int64_t j = j0; j < j1; ++j) {
    const T rec_n = hgn[j] + bn[j];
    T r, z, n;
    h_new[j] = gates::gru_step(xr[j], xz[j], xn[j], hg[j] + b_hh[j], hz[j] + bz[j], rec_n, h_prev[j], r, z, n);
    ar[j] = r;
    az[j] = z;
    an[j] = n;
    hn[j] = rec_n;
  }
}

// Gate gradients of one active row, units [j0, j1): from dh = dL/dh~ (zoneout's share already
// taken out), writes dL/dxp (gx), dL/d(N_h out + b_hh) (dg: the n block times r) and the part
// of dL/dh_{s-1} through z (dprev, added to what it holds).
template <typename T>
FUSEDRNN_CPU_CLONES void gru_backward_row(const T* __restrict dh, const T* __restrict ar, const T* __restrict hn,
                                          const T* __restrict h_prev, T* __restrict gx, T* __restrict dg,
                                          T* __restrict dprev, int64_t H, int64_t j0, int64_t j1) {
  const T *az = ar + H, *an = ar + 2 * H;
  T *gz = gx + H, *gn = gx + 2 * H, *dgz = dg + H, *dgn = dg + 2 * H;
  for (int64_t j = j0; j < j1; ++j) {
    T dr, dz, dn, dhn, dp;
    gates::gru_step_backward(dh[j], ar[j], az[j], an[j], hn[j], h_prev[j], dr, dz, dn, dhn, dp);
    gx[j] = dr;
    gz[j] = dz;
    gn[j] = dn;
    dg[j] = dr;
    dgz[j] = dz;
    dgn[j] = dhn;
    dprev[j] += dp;
  }
}

// The buffers of one call, as raw pointers (set up by the op functions below).
template <typename T>
struct GruBuffers : ParamPtrs<T> {
  using ParamPtrs<T>::ParamPtrs;
  const T* b_hh{};  // [G] (zeros without a bias)
  bool has_bias{};
  bool save{};      // the forward keeps every step's workspace (else one slot, and a ring of 2 states)
  // workspace: ws_h [T, B, H], ws_gates [T, B, G], ws_hs [T + 1, B, H], ws_hh_hat [T, B, G], ws_hn [T, B, H]
  T *hm{}, *gates{}, *hs{}, *hh_hat{}, *hn{};
  int64_t hh_hat_slots{};  // N_h's x_hat of step s at s % hh_hat_slots: T, 1 (scratch) or the backward's ring
  T* stats{};       // h_stats: batch norm [T, 2, G] (mean, var), layer norm [T, 2, B] (mean, rstd)
  T *mean{}, *rstd{};  // [G] scratch of one step's column statistics
  // forward
  const T* xp{};
  T* y{};
  T* hh{};  // [B, G] the GEMM's output
  // backward
  const T* grad_y{};
  T* grad_xp{};
  T* dhh{};  // [slots, B, G] dL/dhh, step s at s % slots
  int64_t slots{};
  T* dg{};       // [B, G] dL/d(N_h out) (norms; else the dhh slot itself)
  T* dh_cur{};   // [B, H] dL/dh~ of the step
  T* dprev{};    // [B, H] what reaches h_{s-1} other than through W_hh
  T* dh_carry{}; // [B, H] dL/dh_{s-1}, carried to the next (earlier) step
  T *dgamma{}, *db_hh{}, *sum1{}, *sum2{};

  T* hh_hat_at(int64_t s, int64_t n) const { return hh_hat + (s % hh_hat_slots) * n; }
};

template <typename T>
void forward_pointwise(const Rows& rows, const LayerDims& d, const GruBuffers<T>& f, int64_t s, int64_t slot,
                       double eps) {
  const int64_t B = d.B, H = d.H, G = d.G;
  const int64_t ws = f.save ? s : 0;
  const T* h_prev = f.hs + (f.save ? s : (s & 1)) * B * H;
  T* h_new = f.hs + (f.save ? s + 1 : ((s + 1) & 1)) * B * H;
  T* gates_s = f.gates + ws * B * G;
  T* hn = f.hn + ws * B * H;
  T* hh_hat = (d.bn || d.ln) ? f.hh_hat_at(s, B * G) : nullptr;
  const int64_t n = rows.count(s);
  const T inv_n = n > 0 ? T(1) / T(n) : T(0);

  if (d.ln) ln_h_rows(rows, s, B, G, f.hh, f.gamma_h, hh_hat, f.stats + s * 2 * B, eps);
  at::parallel_for(0, H, grain_for(B), [&](int64_t j0, int64_t j1) {
    const int64_t w = j1 - j0;
    if (d.bn)
      for (int k = 0; k < 3; ++k)
        bn_step_stats(rows, s, f.hh, G, k * H + j0, k * H + j1, d.bn_train, inv_n, f.stats, f.rm_h, f.rv_h, slot,
                      eps, f.mean, f.rstd, f.rstd);
    for (int64_t b = 0; b < B; ++b) {
      if (!rows.active(b, s)) {  // finished row: carry the state, emit zeros
        std::memcpy(h_new + b * H + j0, h_prev + b * H + j0, sizeof(T) * w);
        std::fill_n(hn + b * H + j0, w, T(0));
        for (int k = 0; k < 3; ++k) {
          std::fill_n(gates_s + b * G + k * H + j0, w, T(0));
          if (hh_hat) std::fill_n(hh_hat + b * G + k * H + j0, w, T(0));
        }
        std::fill_n(f.y + (s * B + b) * H + j0, w, T(0));
        continue;
      }
      if (d.bn)
        for (int k = 0; k < 3; ++k)
          fwd_bn_h_cols(f.hh + b * G, f.gamma_h, f.mean, f.rstd, hh_hat + b * G, k * H + j0, k * H + j1);
      const int64_t t = rows.pos(b, s);
      T* hr = h_new + b * H;
      gru_gates_row(f.xp + (t * B + b) * G, f.hh + b * G, f.b_hh, h_prev + b * H, gates_s + b * G, hn + b * H, hr, H,
                    j0, j1);
      if (f.zh.p) zoneout_row(f.zh, f.zh.row(s, b), h_prev + b * H, hr, j0, j1);
      std::memcpy(f.y + (t * B + b) * H + j0, hr + j0, sizeof(T) * w);
    }
  });
}

template <typename T>
void backward_pointwise(const Rows& rows, const LayerDims& d, const GruBuffers<T>& f, int64_t s, int64_t slot,
                        double eps) {
  const int64_t B = d.B, H = d.H, G = d.G;
  const T* h_prev = f.hs + s * B * H;
  const T* gates_s = f.gates + s * B * G;
  const T* hn = f.hn + s * B * H;
  const T* hh_hat = (d.bn || d.ln) ? f.hh_hat_at(s, B * G) : nullptr;
  T* dhh = f.dhh + (s % f.slots) * B * G;
  T* dg = (d.bn || d.ln) ? f.dg : dhh;
  const T n_bn = d.bn_train ? T(rows.count(s)) : T(0);  // 0 selects the eval formula in bn_backward

  at::parallel_for(0, H, grain_for(B), [&](int64_t j0, int64_t j1) {
    const int64_t w = j1 - j0;
    if (d.bn)
      for (int k = 0; k < 3; ++k)
        bn_backward_setup(s, G, k * H + j0, k * H + j1, d.bn_train, f.stats, f.rv_h, slot, eps, f.rstd, f.sum1,
                          f.sum2);
    for (int64_t b = 0; b < B; ++b) {
      if (!rows.active(b, s)) {  // finished row: nothing flows into its gates
        for (int k = 0; k < 3; ++k) {
          std::fill_n(f.grad_xp + (s * B + b) * G + k * H + j0, w, T(0));
          std::fill_n(dhh + b * G + k * H + j0, w, T(0));
        }
        continue;
      }
      const int64_t t = rows.pos(b, s);
      T* dh = f.dh_cur + b * H;
      T* dp = f.dprev + b * H;
      const T* gy = f.grad_y + (t * B + b) * H;
      for (int64_t j = j0; j < j1; ++j) {
        dh[j] = gy[j] + f.dh_carry[b * H + j];
        dp[j] = T(0);
      }
      if (f.zh.p) zoneout_split(f.zh, f.zh.row(s, b), dh, dp, j0, j1);  // h_s = zh h_{s-1} + (1 - zh) h~_s
      T* gr = dg + b * G;
      gru_backward_row(dh, gates_s + b * G, hn + b * H, h_prev + b * H, f.grad_xp + (t * B + b) * G, gr, dp, H, j0,
                       j1);
      for (int k = 0; k < 3; ++k) {
        const int64_t c0 = k * H + j0, c1 = k * H + j1;
        if (f.has_bias) add_row(gr + c0, f.db_hh + c0, w);
        if (d.ln) add_product(gr, hh_hat + b * G, f.dgamma, c0, c1);
        if (d.bn) {
          if (d.bn_train) bwd_bn_h_cols<T, true>(gr, hh_hat + b * G, f.gamma_h, f.rstd, f.dgamma, f.sum1, f.sum2,
                                                 dhh + b * G, c0, c1);
          else bwd_bn_h_cols<T, false>(gr, hh_hat + b * G, f.gamma_h, f.rstd, f.dgamma, f.sum1, f.sum2,
                                       dhh + b * G, c0, c1);
        }
      }
    }
    if (d.bn_train)  // BN_h backward through the batch statistics
      for (int64_t b = 0; b < B; ++b) {
        if (!rows.active(b, s)) continue;
        for (int k = 0; k < 3; ++k)
          bwd_bn_h_row(dg + b * G, f.gamma_h, hh_hat + b * G, f.rstd, f.sum1, f.sum2, dhh + b * G, n_bn, k * H + j0,
                       k * H + j1);
      }
  });
  if (!d.ln) return;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {  // LN_h backward, whole rows
    for (int64_t b = b0; b < b1; ++b)
      if (rows.active(b, s))
        ln_backward_row(dg + b * G, f.gamma_h, hh_hat + b * G, f.stats[s * 2 * B + B + b], G, dhh + b * G);
  });
}

const OptT kAbsent;

}  // namespace

GruForwardOut gru_layer_forward_cpu(const at::Tensor& xp_in, const at::Tensor& h0_in, FUSEDRNN_GRU_ARGS_DECL,
                                    int64_t save_workspace_in) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // inner GEMMs record no graph
  check_dim(xp_in, 3, "xp");
  const bool save_workspace = cpu::saves_workspace(save_workspace_in);
  const LayerArgs a = FUSEDRNN_GRU_LAYER_ARGS(kAbsent);
  const LayerDims dims = check_gru_args(xp_in.size(0), xp_in.size(1), xp_in.size(2), xp_in, h0_in, a, b_hh);
  TORCH_CHECK(xp_in.scalar_type() == at::kFloat || xp_in.scalar_type() == at::kDouble,
              "fusedrnn: the native CPU layer kernel takes float32 or float64, got ", xp_in.scalar_type());
  cpu::LayerCall L(dims, a, /*forward=*/true);
  const LayerDims& d = L.d;
  const int64_t T_ = d.T, B = d.B, H = d.H, G = d.G;
  const at::Tensor xp = xp_in.contiguous();
  const at::Tensor b_hh_c = b_hh.has_value() ? b_hh->contiguous() : at::zeros({G}, xp.options());
  const at::TensorOptions opt = xp.options();
  const int64_t TW = save_workspace ? T_ : 1;

  at::Tensor y = new_output({T_, B, H}, opt);
  at::Tensor h_stats = new_output({(d.bn_train || d.ln) ? T_ : 0, 2, d.ln ? B : G}, opt);
  at::Tensor ws_h = new_output({TW, B, H}, opt);
  at::Tensor ws_gates = new_output({TW, B, G}, opt);
  at::Tensor ws_hs = new_output({save_workspace ? T_ + 1 : 2, B, H}, opt);
  const cpu::NormHStore hh_hat = cpu::forward_norm_h(d, save_workspace_in, opt);
  at::Tensor ws_hn = new_output({TW, B, H}, opt);
  at::Tensor hh = at::empty({B, G}, opt), scratch = at::empty({2 * G}, opt);
  ws_hs.select(0, 0).copy_(h0_in);

  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "gru_layer_forward_cpu", [&] {
    using T = scalar_t;
    GruBuffers<T> f(d, L.t);
    cpu::bind<T>(f.xp, xp, f.y, y, f.stats, h_stats, f.hm, ws_h, f.gates, ws_gates, f.hs, ws_hs, f.hh_hat, hh_hat.buf,
                 f.hn, ws_hn, f.hh, hh);
    cpu::bind<T>(f.b_hh, b_hh_c);
    f.save = save_workspace;
    f.hh_hat_slots = hh_hat.slots;
    carve(scratch.data_ptr<T>(), G, f.mean, f.rstd);
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t ws = save_workspace ? s : 0;
      const T* h = f.hs + (save_workspace ? s : (s & 1)) * B * H;
      T* hm = f.hm + ws * B * H;  // h_{s-1} * m_s, the operand of W_hh, for every row
      if (f.mask) {
        const T* m = f.mask_at(s, B * H);
        for (int64_t k = 0; k < B * H; ++k) hm[k] = h[k] * m[k];
      } else {
        std::memcpy(hm, h, sizeof(T) * B * H);
      }
      f.hh = L.gemm.hh->template run<T>(ws_h.select(0, ws), hh);  // [B, H] @ W_hh^T
      forward_pointwise<T>(L.rows, d, f, s, std::min<int64_t>(bn_step_offset + s, d.S - 1), norm_eps);
    }
  });
  at::Tensor h_n = ws_hs.select(0, save_workspace ? T_ : (T_ & 1)).clone();
  return {y, h_n, h_stats, ws_h, ws_gates, ws_hs, hh_hat.out, ws_hn};
}

GruBackwardOut gru_layer_backward_cpu(const at::Tensor& grad_y_in, const at::Tensor& grad_h_n, FUSEDRNN_GRU_ARGS_DECL,
                                      const at::Tensor& h_stats_in, const at::Tensor& ws_h_in,
                                      const at::Tensor& ws_gates_in, const at::Tensor& ws_hs_in,
                                      const at::Tensor& ws_hh_hat_in, const at::Tensor& ws_hn_in) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_dim(grad_y_in, 3, "grad_y");
  const int64_t T_ = grad_y_in.size(0), B = grad_y_in.size(1);
  check_dim(w_hh, 2, "w_hh");
  const LayerArgs a = FUSEDRNN_GRU_LAYER_ARGS(kAbsent);
  const LayerDims dims = check_gru_args(T_, B, w_hh.size(0), grad_y_in, grad_h_n, a, b_hh);
  TORCH_CHECK(grad_y_in.size(2) == dims.H, "fusedrnn: grad_y must have shape [", T_, ", ", B, ", ", dims.H, "], got ",
              grad_y_in.sizes());
  TORCH_CHECK(ws_gates_in.dim() == 3 && ws_gates_in.size(0) == T_ && ws_hs_in.size(0) == T_ + 1 &&
                  ws_h_in.size(0) == T_ && ws_hn_in.size(0) == T_,
              "fusedrnn: gru_layer_backward needs the full workspace (save_workspace=True)");
  cpu::LayerCall L(dims, a, /*forward=*/false);
  const LayerDims& d = L.d;
  const int64_t G = d.G, H = d.H;
  const bool norm = d.bn || d.ln;
  const at::TensorOptions opt = grad_y_in.options();
  const at::Tensor grad_y = grad_y_in.contiguous(), h_stats = h_stats_in.contiguous();
  const at::Tensor hm = ws_h_in.contiguous(), gates_t = ws_gates_in.contiguous(), hs = ws_hs_in.contiguous();
  const at::Tensor hn = ws_hn_in.contiguous();

  at::Tensor grad_xp = new_output({T_, B, G}, opt);
  // dL/dhh lives in a ring of `slots` steps; dW_hh accumulates one GEMM per chunk of steps
  // (rows >= 512 keep the GEMM efficient), so no second [T, B, G] buffer is held.
  const int64_t slots = std::min<int64_t>(std::max<int64_t>(T_, 1), std::max<int64_t>(16, (511 + B) / std::max<int64_t>(B, 1)));
  at::Tensor dhh = new_output({slots, B, G}, opt);
  cpu::NormHStore hh_hat = cpu::backward_norm_h(d, ws_hh_hat_in, slots, opt);
  at::Tensor grad_w_hh = new_zeroed_output({G, H}, opt);
  at::Tensor dh_carry = grad_h_n.to(opt).contiguous().clone();
  at::Tensor dh_cur = at::empty({B, H}, opt), dprev = at::empty({B, H}, opt), dh_rec = at::empty({B, H}, opt);
  at::Tensor dg = at::empty({norm ? B : 0, G}, opt);
  at::Tensor dgamma = at::zeros({norm ? G : 0}, opt), db_hh = at::zeros({b_hh.has_value() ? G : 0}, opt);
  at::Tensor scratch = at::empty({4 * G}, opt);
  cpu::LayerGemms& gemm = L.gemm;

  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "gru_layer_backward_cpu", [&] {
    using T = scalar_t;
    GruBuffers<T> f(d, L.t);
    cpu::bind<T>(f.grad_y, grad_y, f.hm, hm, f.gates, gates_t, f.hs, hs, f.hn, hn, f.grad_xp, grad_xp, f.dhh, dhh,
                 f.dh_cur, dh_cur, f.dprev, dprev, f.dh_carry, dh_carry, f.dgamma, dgamma, f.db_hh, db_hh);
    if (d.bn_train || d.ln) cpu::bind<T>(f.stats, h_stats);
    if (norm) cpu::bind<T>(f.hh_hat, hh_hat.buf, f.dg, dg);
    f.hh_hat_slots = hh_hat.slots;
    f.has_bias = b_hh.has_value();
    f.slots = slots;
    carve(scratch.data_ptr<T>(), G, f.mean, f.rstd, f.sum1, f.sum2);
    for (int64_t s = T_ - 1; s >= 0; --s) {
      if (hh_hat.recompute && (s == T_ - 1 || (s + 1) % slots == 0))  // the chunk [s / slots * slots, s] begins
        recompute_norm_h<T>(d, f.stats, f.rm_h, f.rv_h, hm, w_hh, hh_hat.buf, s / slots * slots, s, bn_step_offset,
                            norm_eps);
      backward_pointwise<T>(L.rows, d, f, s, std::min<int64_t>(bn_step_offset + s, d.S - 1), norm_eps);
      const T* dr = gemm.hh->template run<T>(dhh.select(0, s % slots), dh_rec);  // [B, G] @ W_hh
      if (s % slots == 0) {  // the chunk [s, s + n) is complete: dW_hh += dhh^T hm
        const int64_t n = std::min<int64_t>(slots, T_ - s);
        cpu::matmul(dhh.narrow(0, 0, n).view({n * B, G}).t(), hm.narrow(0, s, n).view({n * B, H}), grad_w_hh,
                    /*accumulate=*/true);
      }
      const T* m = f.mask_at(s, B * H);
      for (int64_t b = 0; b < B; ++b) {
        if (!L.rows.active(b, s)) continue;  // a finished row's state was carried: its gradient too
        for (int64_t k = b * H; k < (b + 1) * H; ++k) f.dh_carry[k] = (m ? dr[k] * m[k] : dr[k]) + f.dprev[k];
      }
    }
  });
  return {grad_xp, dh_carry, grad_w_hh, db_hh, dgamma};
}

}  // namespace fusedrnn
