// CPU backward of the layer recurrence op (fusedrnn::lstm_layer_backward).
//
// Dimension letters: T steps, B batch, H hidden, P projection, R = P or H (width of h),
// G = 4H gate columns (i, f, g, o), S running-statistics slots.  s is the step (processing
// order, from T - 1 down); t = pos(b, s) the time position it reads/writes.
//
// Mirrors the forward (layer_forward.cpp).  float32 without a projection runs fused steps
// (layer_backward_fused): each thread forms the gate gradients of its units, and after one
// barrier the register tile of fused_step.h multiplies them by W_hh into dL/dh_{s-1} of the
// same units, the mask and zoneout in its epilogue; all steps in one parallel region.  Layer
// norm runs each row through the unfused backward's row kernels, then the same tile
// (layer_backward_ln_rows).
// Otherwise, per step, the fused pointwise pass of the gate gradients (N_c, cell, N_h
// backward, zoneout), then one GEMM for dh (and one with W_hr under a projection).  The
// weight gradients are single GEMMs after the loop (dW_hh in chunks of steps when dL/dhh
// lives in a ring).  No allocation inside the loop.  float32 and float64.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <tuple>

#include "../gates.h"
#include "../ops.h"
#include "fused_step.h"
#include "layer_rows.h"

namespace fusedrnn {
namespace {

using namespace cpu;  // layer_rows.h, rows.h, gemm.h

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
  // [j0, j1) lies within [0, H): the gate blocks' columns j, H + j, 2H + j, 3H + j never meet.
  // Without this GCC leaves the COPY_DHH loop scalar (two outputs of four blocks each).
#pragma GCC ivdep
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

// Rows [b0, b0 + MR) of the columns [j0, j0 + 4 kLanes) of dL/dh_{s-1}: the register tile
// over the gate gradients dhh (row stride G = K) and the group's panels pw of W_hh, then the
// carry of each active row, (tile * m_s) + the zoned-out part of dL/dh_s; finished rows keep
// theirs.  Columns past R are padding.
template <int MR>
FUSEDRNN_CPU_CLONES void backward_tile(const float* pw, const float* dhh, int64_t K, const Rows& rows, int64_t s,
                                       int64_t b0, int64_t j0, int64_t R, const float* m, const float* dh_zone,
                                       float* dh_carry) {
  alignas(64) float t[MR][4][kLanes];
  tile_product<MR>(pw, dhh, K, K, t);
  const int64_t n = std::min(4 * kLanes, R - j0);
#pragma GCC unroll 1
  for (int r = 0; r < MR; ++r) {
    const int64_t b = b0 + r;
    if (!rows.active(b, s)) continue;
    const float* v = &t[r][0][0];
    float* out = dh_carry + b * R + j0;
    const float* mr = m ? m + b * R + j0 : nullptr;
    const float* zr = dh_zone ? dh_zone + b * R + j0 : nullptr;
    if (mr && zr)
      for (int64_t j = 0; j < n; ++j) out[j] = v[j] * mr[j] + zr[j];
    else if (mr)
      for (int64_t j = 0; j < n; ++j) out[j] = v[j] * mr[j];
    else if (zr)
      for (int64_t j = 0; j < n; ++j) out[j] = v[j] + zr[j];
    else
      std::memcpy(out, v, sizeof(float) * n);
  }
}

using BackwardTileFn = void (*)(const float*, const float*, int64_t, const Rows&, int64_t, int64_t, int64_t, int64_t,
                                const float*, const float*, float*);

inline BackwardTileFn backward_tile_for(int64_t rows) {
  static constexpr BackwardTileFn fns[kFusedRows] = {backward_tile<1>, backward_tile<2>, backward_tile<3>,
                                                     backward_tile<4>, backward_tile<5>, backward_tile<6>};
  return fns[rows - 1];
}

// What backward_pointwise reads and writes besides the parameters: the gradients, the saved
// statistics and workspace, and the per-step scratch of one call (set up by
// lstm_layer_backward_cpu).
template <typename T>
struct BwdBuffers : ParamPtrs<T> {
  using ParamPtrs<T>::ParamPtrs;
  const T* grad_y{};
  const T *h_stats{}, *c_stats{};          // the forward's statistics (BN train, LN)
  const T *act{}, *c{};                  // workspace
  const T* hh_hat{};                     // N_h's x_hat [slots, B, G]: step s at s % hh_hat_slots
  int64_t hh_hat_slots{};                // T (saved by the forward), or the recompute ring's slots
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

  // Step s's [B, G] dL/dhh (n = B x G): its slot of the ring (or grad_xp's step).
  T* dhh_at(int64_t s, int64_t n) const { return dhh + (s % dhh_slots) * n; }
  // Step s's [B, G] x_hat of N_h (n = B x G).
  const T* hh_hat_at(int64_t s, int64_t n) const { return hh_hat + (s % hh_hat_slots) * n; }

  // Statistics and batch-sum scratch of one step, carved from st [4G + 4H].
  void set_scratch(T* st, int64_t G, int64_t H) {
    carve(carve(st, G, mean_g, rstd_g, sum1_g, sum2_g), H, mean_c, rstd_c, sum1_c, sum2_c);
  }
};

// dL/dh_s of the active row b, columns [j0, j1), into dh_cur: the output's gradient plus what
// flows back from step s + 1; under zoneout the part that reaches h_{s-1} directly
// (h_s = zh h_{s-1} + ...) moves to dh_zone.
template <typename T>
void step_dh(const Rows& rows, const BwdBuffers<T>& f, int64_t s, int64_t b, int64_t B, int64_t R, int64_t j0,
             int64_t j1) {
  T* dh = f.dh_cur + b * R;
  const T* gy = f.grad_y + (rows.pos(b, s) * B + b) * R;
  for (int64_t j = j0; j < j1; ++j) dh[j] = gy[j] + f.dh_carry[b * R + j];
  if (f.zh.p) zoneout_split(f.zh, f.zh.row(s, b), dh, f.dh_zone + b * R, j0, j1);
}

// The gate gradients of step s for the units [j0, j1), every row: zoneout's split of dL/dc_s,
// BN_c's batch sums, the gates (dL/dxp, and dL/dhh when it has a buffer of its own), BN_h's
// backward (dL/dhh); under layer norm the rows' LN_c pass (backward_pointwise) comes first.
// dL/dh_s (f.dhc) of these units must be in place.
template <typename T>
void backward_units(const Rows& rows, const LayerDims& d, const BwdBuffers<T>& f, int64_t s, bool bn_train,
                    int64_t slot, double eps, int64_t j0, int64_t j1) {
  const int64_t B = d.B, H = d.H, G = d.G;
  const T* act = f.act + s * B * G;
  const T* c_prev = f.c + s * B * H;
  // with zoneout the output and the gates saw the candidate c~_s, not the state c_s
  const T* c_cur = f.zc.p ? f.c_til : f.c + (s + 1) * B * H;
  const T* hh_hat = (d.bn || d.ln) ? f.hh_hat_at(s, B * G) : nullptr;
  T* dhh = f.dhh_at(s, B * G);
  const bool copy_dhh = f.dhh != f.grad_xp;
  const int64_t n = rows.count(s);
  const T n_bn = bn_train ? T(n) : T(0);  // 0 selects the eval formula in bn_backward
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
      bn_backward_setup(s, G, k * H + j0, k * H + j1, bn_train, f.h_stats, f.rv_h, slot, eps, f.rstd_g, f.sum1_g,
                        f.sum2_g);
    bn_backward_setup(s, H, j0, j1, bn_train, f.c_stats, f.rv_c, slot, eps, f.rstd_c, f.sum1_c, f.sum2_c);
    for (int64_t j = j0; j < j1; ++j) f.mean_c[j] = bn_train ? f.c_stats[(s * 2) * H + j] : f.rm_c[slot * H + j];
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
}

template <typename T>
void backward_pointwise(const Rows& rows, const LayerDims& d, const BwdBuffers<T>& f, int64_t s,
                        bool bn_train, int64_t slot, double eps) {
  const int64_t B = d.B, H = d.H, G = d.G;
  const T* act = f.act + s * B * G;
  const T* c_prev = f.c + s * B * H;
  const T* hh_hat = d.ln ? f.hh_hat_at(s, B * G) : nullptr;
  T* dhh = f.dhh_at(s, B * G);

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

  at::parallel_for(0, H, grain_for(B),
                   [&](int64_t j0, int64_t j1) { backward_units(rows, d, f, s, bn_train, slot, eps, j0, j1); });
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

// The backward by fused steps (float32, the configurations of use_fused_step): per step the
// gate gradients of each thread's units (phase a: backward_units, batch norm's batch sums
// included, as a unit's columns are one thread's), then dL/dh_{s-1} = (dL/dhh W_hh) * m_s of
// the same units' columns by the register tile of fused_step.h, the carry written in its
// epilogue (phase b); steps hi down to lo in one parallel region.  Step s's [B, G] gate
// gradients go to grad_xp and, when dhh is a ring of its own, to its slot s % dhh_slots.
// panels: W_hh [G, R] packed by pack_panels in groups of four panels.
template <typename T>
void layer_backward_fused(const LayerCall&, const BwdBuffers<T>&, const at::Tensor&, int64_t, int64_t, int64_t,
                          double) {
  TORCH_INTERNAL_ASSERT(false, "fusedrnn: the fused step takes float32");
}

template <>
void layer_backward_fused(const LayerCall& L, const BwdBuffers<float>& f, const at::Tensor& panels, int64_t hi,
                          int64_t lo, int64_t step_offset, double eps) {
  const LayerDims& d = L.d;
  const Rows& rows = L.rows;
  const int64_t B = d.B, H = d.H, G = d.G, R = d.R;  // R == H: no projection here
  const int64_t NG = (R + 4 * kLanes - 1) / (4 * kLanes);
  const auto tiles = fused_row_tiles(B);
  const float* pw = panels.data_ptr<float>();
  auto phase_a = [&](int64_t s, int64_t g0, int64_t g1) {
    const int64_t j0 = g0 * 4 * kLanes, j1 = std::min(H, g1 * 4 * kLanes);
    if (j1 <= j0) return;
    for (int64_t b = 0; b < B; ++b)
      if (rows.active(b, s)) step_dh(rows, f, s, b, B, R, j0, j1);
    backward_units(rows, d, f, s, d.bn_train, std::min(step_offset + s, d.S - 1), eps, j0, j1);
  };
  auto phase_b = [&](int64_t s, int64_t g0, int64_t g1) {
    const float* dhh = f.dhh_at(s, B * G);
    const float* m = f.mask_at(s, B * R);
    for (int64_t g = g0; g < g1; ++g)
      for (const auto& [b0, mr] : tiles)
        backward_tile_for(mr)(pw + g * 4 * G * kLanes, dhh + b0 * G, G, rows, s, b0, g * 4 * kLanes, R, m,
                              f.zh.p ? f.dh_zone : nullptr, f.dh_carry);
  };
  fused_backward_steps(hi, lo, NG, B * G * NG * 4 * kLanes, phase_a, phase_b);
}

// The layer-norm backward (the forward's split, fused_row_steps): per step, per row the
// unfused backward's row kernels (LN_c, the gates, LN_h) into dL/dhh, then the register tile
// over dL/dhh for dL/dh_{s-1}.  With a row tile per thread each thread takes whole row tiles
// through steps hi down to lo, the tile over its own rows for every column group: rows never
// meet.  With fewer row tiles than threads the rows split the row kernels and the column groups
// the tile, a barrier after each (two_phase_steps).  The parameter gradients are summed per
// invocation into part [n, G + 2H] (dgamma_h, dgamma_c, dbeta_c; n: the row tiles, or the
// slots), added up after.
template <typename T>
void layer_backward_ln_rows(const LayerCall&, const BwdBuffers<T>&, const at::Tensor&, int64_t, int64_t, T*) {
  TORCH_INTERNAL_ASSERT(false, "fusedrnn: the fused step takes float32");
}

template <>
void layer_backward_ln_rows(const LayerCall& L, const BwdBuffers<float>& f, const at::Tensor& panels, int64_t hi,
                            int64_t lo, float* part) {
  const LayerDims& d = L.d;
  const Rows& rows = L.rows;
  const int64_t B = d.B, H = d.H, G = d.G, R = d.R;  // R == H: no projection here
  const int64_t NG = (R + 4 * kLanes - 1) / (4 * kLanes);
  const auto tiles = fused_row_tiles(B);
  const float* pw = panels.data_ptr<float>();
  // row b of step s up to its dL/dhh; the parameter gradients into dgh [G + 2H]
  auto row = [&](int64_t s, int64_t b, float* dgh) {
    const float* act = f.act + s * B * G;
    float* dhh = f.dhh_at(s, B * G);
    if (!rows.active(b, s)) {  // finished row: nothing flows into its gates
      std::fill_n(f.grad_xp + (s * B + b) * G, G, 0.0f);
      std::fill_n(dhh + b * G, G, 0.0f);
      return;
    }
    const float* c_prev = f.c + s * B * H;
    const float* hh_hat = f.hh_hat_at(s, B * G);
    const int64_t k0 = b * H;
    step_dh(rows, f, s, b, B, R, 0, R);
    bwd_ln_c_row(act + b * G, c_prev + k0, f.dh_cur + b * R, f.gamma_c, f.beta_c, f.c_stats[s * 2 * B + b],
                 f.c_stats[s * 2 * B + B + b], f.c_til + k0, f.ln_do + k0, f.ln_dy + k0, f.ln_chat + k0,
                 f.ln_dc + k0, H);
    if (f.zc.p) zoneout_split(f.zc, f.zc.row(s, b), f.dc_carry + k0, f.dc_zone + k0, 0, H);
    float* gx = f.grad_xp + (rows.pos(b, s) * B + b) * G;
    bwd_gates_row_ln(act + b * G, c_prev + k0, f.ln_do + k0, f.ln_dc + k0, f.ln_dy + k0, f.ln_chat + k0,
                     f.dc_carry + k0, gx, dgh + G, dgh + G + H, H, 0, H);
    add_product(gx, hh_hat + b * G, dgh, 0, G);
    if (f.zc.p)
      for (int64_t j = 0; j < H; ++j) f.dc_carry[k0 + j] += f.dc_zone[k0 + j];
    ln_backward_row(gx, f.gamma_h, hh_hat + b * G, f.h_stats[s * 2 * B + B + b], G, dhh + b * G);
  };
  // dL/dh_{s-1} of rows [b0, b0 + mr), column group g
  auto tile = [&](int64_t s, int64_t g, int64_t b0, int64_t mr) {
    backward_tile_for(mr)(pw + g * 4 * G * kLanes, f.dhh_at(s, B * G) + b0 * G, G, rows, s, b0, g * 4 * kLanes, R,
                          f.mask_at(s, B * R), f.zh.p ? f.dh_zone : nullptr, f.dh_carry);
  };
  if (ln_by_row_tiles(B)) {
    at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t s = hi; s >= lo; --s)
        for (int64_t t = t0; t < t1; ++t) {
          const auto [b0, mr] = tiles[t];
          for (int64_t b = b0; b < b0 + mr; ++b) row(s, b, part + t0 * (G + 2 * H));
          for (int64_t g = 0; g < NG; ++g) tile(s, g, b0, mr);
        }
    });
    return;
  }
  const int64_t slots = step_slots(B * G * NG * 4 * kLanes, NG);
  two_phase_steps(
      hi - lo + 1, slots, /*sync_after=*/true,
      [&](int64_t i, int64_t w0, int64_t w1) {
        for (int64_t b = B * w0 / slots; b < B * w1 / slots; ++b) row(hi - i, b, part + w0 * (G + 2 * H));
      },
      [&](int64_t i, int64_t w0, int64_t w1) {
        for (int64_t g = NG * w0 / slots; g < NG * w1 / slots; ++g)
          for (const auto& [b0, mr] : tiles) tile(hi - i, g, b0, mr);
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
  const LayerArgs a = FUSEDRNN_LAYER_ARGS;
  const LayerDims dims = check_layer_args(T_, B, w_hh.size(0), grad_y_in, grad_h_n, grad_c_n, a);
  TORCH_CHECK(grad_y_in.size(2) == dims.R, "fusedrnn: grad_y must have shape [", T_, ", ", B, ", ",
              dims.R, "], got ", grad_y_in.sizes());
  TORCH_CHECK(ws_act.dim() == 3 && ws_act.size(0) == T_ && ws_c.size(0) == T_ + 1 &&
                  ws_hm.size(0) == T_,
              "fusedrnn: lstm_layer_backward needs the full workspace (save_workspace=True)");
  const bool fused = use_fused_step(dims, grad_y_in.scalar_type());
  cpu::LayerCall L(dims, a, /*forward=*/false, /*with_hh=*/!fused);
  const LayerDims& d = L.d;
  const Rows& rows = L.rows;
  const int64_t G = d.G, H = d.H, R = d.R, P = d.P, S = d.S;
  const bool bn_train = d.bn_train;
  const at::TensorOptions opt = grad_y_in.options();
  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor act = ws_act.contiguous(), c = ws_c.contiguous(), hm = ws_hm.contiguous();
  const at::Tensor hc = ws_hc.contiguous();
  const at::Tensor h_stats = h_stats_in.contiguous(), c_stats = c_stats_in.contiguous();

  at::Tensor grad_xp = new_output({T_, B, G}, opt);
  // Without BN_h, lengths or reversal, dL/dhh of step s is grad_xp[s]: no second buffer, and
  // dW_hh is one GEMM after the loop.  Otherwise dL/dhh lives in a ring of `slots` steps and
  // dW_hh accumulates one GEMM per chunk of steps (rows >= 512 keep the GEMM efficient), so
  // the backward holds no second [T, B, G] buffer.
  const bool alias = !d.bn && !d.ln && !d.lengths && !reverse;
  const int64_t slots = alias ? std::max<int64_t>(T_, 1) : std::min<int64_t>(std::max<int64_t>(T_, 1),
                                                                               std::max<int64_t>(16, (511 + B) / std::max<int64_t>(B, 1)));
  at::Tensor dhh = alias ? grad_xp : new_output({slots, B, G}, opt);
  at::Tensor grad_w_hh = new_output({G, R}, opt);
  bool w_hh_written = false;
  at::Tensor dh_all = at::empty({d.proj ? T_ : 0, B, R}, opt);
  at::Tensor dh_carry = grad_h_n.to(opt).contiguous().clone();
  at::Tensor dc_carry = grad_c_n.to(opt).contiguous().clone();
  at::Tensor dh_cur = at::empty({B, R}, opt), dh_rec = at::empty({B, R}, opt);
  at::Tensor dhc = d.proj ? at::empty({B, H}, opt) : dh_cur;
  const bool norm = d.bn || d.ln;
  cpu::NormHStore hh_hat = cpu::backward_norm_h(d, ws_hh_hat, slots, opt);
  at::Tensor dgamma_h = at::zeros({norm ? G : 0}, opt), dgamma_c = at::zeros({norm ? H : 0}, opt);
  at::Tensor dbeta_c = at::zeros({norm ? H : 0}, opt);
  at::Tensor scratch = at::empty({4 * G + 4 * H}, opt);
  at::Tensor zone = at::empty({(d.zoneout || d.ln) ? B * (R + 2 * H) : 0}, opt);  // dh_zone, dc_zone, c_til
  at::Tensor ln_scratch = at::empty({d.ln ? 4 * B * H : 0}, opt);
  cpu::LayerGemms& gemm = L.gemm;

  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "lstm_layer_backward_cpu", [&] {
    using T = scalar_t;
    BwdBuffers<T> f(d, L.t);
    cpu::bind<T>(f.grad_y, grad_y, f.act, act, f.c, c, f.grad_xp, grad_xp, f.dhh, dhh, f.dh_all, dh_all,
                 f.dgamma_h, dgamma_h, f.dgamma_c, dgamma_c, f.dbeta_c, dbeta_c, f.dh_carry, dh_carry,
                 f.dc_carry, dc_carry, f.dh_cur, dh_cur, f.dhc, dhc, f.dh_rec, dh_rec);
    if (bn_train || d.ln) cpu::bind<T>(f.h_stats, h_stats, f.c_stats, c_stats);  // (else not read: any dtype)
    if (norm) cpu::bind<T>(f.hh_hat, hh_hat.buf);
    f.hh_hat_slots = hh_hat.slots;
    f.dhh_slots = slots;
    if (d.zoneout || d.ln) carve(carve(zone.data_ptr<T>(), B * R, f.dh_zone), B * H, f.dc_zone, f.c_til);
    if (d.ln) carve(ln_scratch.data_ptr<T>(), B * H, f.ln_do, f.ln_dy, f.ln_chat, f.ln_dc);
    f.set_scratch(scratch.data_ptr<T>(), G, H);

    if (fused) {  // chunks of steps (all of them with alias), each chunk's dW_hh after it
      const at::Tensor panels = cpu::pack_panels(L.t.w_hh, /*trans=*/false, /*multiple=*/4);
      // per row tile or slot of layer_backward_ln_rows: dgamma_h, dgamma_c, dbeta_c
      const int64_t ln_parts = d.ln ? std::max<int64_t>(fused_row_tile_count(B), at::get_num_threads()) : 0;
      at::Tensor ln_part = at::zeros({ln_parts, G + 2 * H}, opt);
      for (int64_t hi = T_ - 1; hi >= 0;) {
        const int64_t lo = alias ? 0 : hi / slots * slots;
        if (hh_hat.recompute)
          recompute_norm_h<T>(d, f.h_stats, f.rm_h, f.rv_h, hm, w_hh, hh_hat.buf, lo, hi, bn_step_offset, norm_eps);
        if (d.ln) layer_backward_ln_rows<T>(L, f, panels, hi, lo, ln_part.data_ptr<T>());
        else layer_backward_fused<T>(L, f, panels, hi, lo, bn_step_offset, norm_eps);
        if (!alias) {
          const int64_t n = hi + 1 - lo;
          cpu::matmul(dhh.narrow(0, 0, n).view({n * B, G}).t(), hm.narrow(0, lo, n).view({n * B, R}), grad_w_hh,
                      /*accumulate=*/w_hh_written);
          w_hh_written = true;
        }
        hi = lo - 1;
      }
      if (d.ln) {  // the row tiles' parameter gradients, in order
        const at::Tensor sum = ln_part.sum(0);
        dgamma_h.copy_(sum.narrow(0, 0, G));
        dgamma_c.copy_(sum.narrow(0, G, H));
        dbeta_c.copy_(sum.narrow(0, G + H, H));
      }
      return;
    }

    for (int64_t s = T_ - 1; s >= 0; --s) {
      if (hh_hat.recompute && (s == T_ - 1 || (s + 1) % slots == 0))  // the chunk [s / slots * slots, s] begins
        recompute_norm_h<T>(d, f.h_stats, f.rm_h, f.rv_h, hm, w_hh, hh_hat.buf, s / slots * slots, s, bn_step_offset,
                            norm_eps);
      // dL/dh_s: from the output at this step plus what flows back from step s + 1
      for (int64_t b = 0; b < B; ++b) {
        if (rows.active(b, s)) step_dh(rows, f, s, b, B, R, 0, R);
        else std::fill_n(f.dh_cur + b * R, R, T(0));
      }
      if (d.proj) {
        std::memcpy(f.dh_all + s * B * R, f.dh_cur, sizeof(T) * B * R);
        f.dhc = gemm.hr->template run<T>(dh_cur, dhc);  // [B, P] @ W_hr
      }
      const int64_t slot = std::min<int64_t>(bn_step_offset + s, S - 1);
      backward_pointwise<T>(rows, d, f, s, bn_train, slot, norm_eps);
      f.dh_rec = gemm.hh->template run<T>(dhh.select(0, s % slots), dh_rec);  // [B, G] @ W_hh
      if (!alias && s % slots == 0) {  // the chunk [s, s + n) is complete: dW_hh += dhh^T hm
        const int64_t n = std::min<int64_t>(slots, T_ - s);
        cpu::matmul(dhh.narrow(0, 0, n).view({n * B, G}).t(), hm.narrow(0, s, n).view({n * B, R}), grad_w_hh,
                    /*accumulate=*/w_hh_written);
        w_hh_written = true;
      }
      const T* m = f.mask_at(s, B * R);
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
