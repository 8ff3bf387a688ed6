// The LSTM's forward step as one kernel (float32): the GEMM h_{s-1} W_hh^T by a register-tiled
// micro-kernel, with the gates, the cell update, zoneout, batch norm, the output and the next
// step's masked operand done in its epilogue while the tile is still in cache; the drivers of
// the fused backward (fused_backward_steps, the same tile over the gate gradients) and of the
// row split that layer norm takes (fused_row_steps).
//
// Dimension letters: B batch rows, K = R the width of h (the reduction), H hidden units,
// G = 4H gate columns (i, f, g, o), U = ceil(H / kLanes) unit blocks, s the step.
//
// W_hh is packed once per call into unit-block panels [U][4][K][kLanes]: block u holds, for
// each gate, the rows of units [16u, 16u + 16).  A tile is kFusedRows rows x one unit block:
// 4 x 6 accumulators of kLanes floats (24 of AVX-512's 32 registers), one load of each gate's
// panel row per k feeding 24 FMAs; measured standalone at 184-198 GFLOP/s on the two cores
// here (M = 32 .. 128, K = 256 .. 650: the FMA peak) against 110 for the 2 x 8 panel kernel of
// small_gemm.h.  Each tile holds all four gates of its units, so the epilogue needs nothing
// from another thread: a step is one parallel pass over unit blocks (one fork/join), where the
// library GEMM and a separate pointwise pass took two and a round trip of [B, G] through memory.
// K is summed in blocks of kKBlock (the accuracy rule of gemm.h), the order fixed: results do
// not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <cstring>
#include <vector>

#include "../gates.h"
#include "layer_rows.h"
#include "gemm.h"
#include "small_gemm.h"

namespace fusedrnn {
namespace cpu {

constexpr int kFusedRows = 6;  // rows per tile: 4 gates x 6 rows = 24 accumulators

// W_hh [G, K] (rows i, f, g, o of H each) as panels [U][4][K][kLanes], zero past H.
inline at::Tensor pack_gate_panels(const at::Tensor& w_hh, int64_t H) {
  const at::Tensor w = w_hh.contiguous();
  const int64_t K = w.size(1), U = (H + kLanes - 1) / kLanes;
  at::Tensor out = new_zeroed_output({U, 4, K, kLanes}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, U, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t j0 = u * kLanes, nu = std::min(kLanes, H - j0);
      for (int64_t g = 0; g < 4; ++g) {
        float* panel = dst + (u * 4 + g) * K * kLanes;
        for (int64_t l = 0; l < nu; ++l) {
          const float* row = src + (g * H + j0 + l) * K;
          for (int64_t k = 0; k < K; ++k) panel[k * kLanes + l] = row[k];
        }
      }
    }
  });
  return out;
}

// Recurrent batch norm in the fused step: BN_h of the W_hh product and BN_c of c~, per column
// over the rows active at the step.  A unit block's columns are one thread's for the whole
// step, so its statistics need nothing from another thread: the block's tiles write their
// products to the step's hh, then one pass over its rows normalises them (fused_bn_block).
struct FusedBN {
  float* hh_hat{};                 // [T, B, G]  BN_h's x_hat (saved with the workspace), or null (not kept)
  float *h_stats{}, *c_stats{};    // [T, 2, G], [T, 2, H]  (mean, biased var), in training
  const ParamPtrs<float>* p{};     // gamma_h, gamma_c, beta_c; running statistics [S, G], [S, H] (eval)
  int64_t step_offset{}, S{1};
  bool train{};
  float eps{};
};

// What one step reads and writes.  Rows finished at this step (lengths) carry h and c and
// emit zeros, as in the unfused forward.
struct FusedStep {
  const float* panels{};  // pack_gate_panels(W_hh)
  const float* a{};       // [B, K]  h_{s-1} * m_s, the GEMM operand
  const float* xp{};      // [T, B, G]  input projection (bias included)
  const float* c_prev{};  // [B, H]
  float* c_new{};         // [B, H]
  const float* h_prev{};  // [B, R]  h_{s-1}
  float* h_next{};        // [B, R]  h_s
  float* hm_next{};       // [B, R]  h_s * m_{s+1} (h_s without a mask), or null at the last step
  const float* m_next{};  // [B, R]  m_{s+1}, or null
  float* act{};           // [B, G]  the activated gates (saved for the backward), or null
  float* y{};             // [T, B, R]
  ZoneoutWeight<float> zc, zh;
  const Rows* rows{};
  const FusedBN* bn{};    // batch norm, or null
  float* hh{};            // [B, G]  h W_hh^T under a norm (fused_norm_tile's output)
  int64_t s{}, B{}, H{}, K{};
};

// The gates of kLanes units of one row: pre-activations x + hh (x with stride xs between
// gates), the activations to ar (stride as, when SAVE), c~ to cn, h~ = o tanh(c~) to h.
// A fixed trip count and restrict parameters, so that it vectorises.
template <bool SAVE>
__attribute__((always_inline, flatten)) inline void fused_lanes(const float* __restrict x, int64_t xs,
                                                       const float (*__restrict hh)[kLanes],
                                                       const float* __restrict cp, float* __restrict ar, int64_t as,
                                                       float* __restrict cn, float* __restrict h) {
#pragma GCC ivdep
  for (int64_t l = 0; l < kLanes; ++l) {
    float i = x[l] + hh[0][l], fg = x[xs + l] + hh[1][l], g = x[2 * xs + l] + hh[2][l], o = x[3 * xs + l] + hh[3][l];
    gates::activate(i, fg, g, o);
    const float c = gates::cell_update(i, fg, g, cp[l]);
    if constexpr (SAVE) {
      ar[l] = i;
      ar[as + l] = fg;
      ar[2 * as + l] = g;
      ar[3 * as + l] = o;
    }
    cn[l] = c;
    float tc;
    h[l] = gates::hidden(o, c, tc);
  }
}

// dst[0, n) = src[0, n), n <= kLanes; a whole block as one vector move, not a library call.
__attribute__((always_inline)) inline void copy_lanes(float* dst, const float* src, int64_t n) {
  if (n == kLanes) {
    Vec16 v;
    std::memcpy(&v, src, sizeof(Vec16));
    std::memcpy(dst, &v, sizeof(Vec16));
  } else {
    std::memcpy(dst, src, sizeof(float) * n);
  }
}

// dst[0, kLanes) = src[0, n), zero past n.
__attribute__((always_inline)) inline void load_lanes(float* dst, const float* src, int64_t n) {
  if (n == kLanes) {
    copy_lanes(dst, src, n);
  } else {
    std::fill_n(dst, kLanes, 0.0f);
    std::memcpy(dst, src, sizeof(float) * n);
  }
}

// Zoneout of units [j0, j0 + n) of one row (zoneout_mix's formula, inline: a call per block
// cost more than the mixing): v = z * prev + (1 - z) * v, with z the row zr of weight z.
__attribute__((always_inline)) inline void zoneout_lanes(const ZoneoutWeight<float>& z, const float* zr, int64_t j0,
                                                         const float* __restrict prev, float* __restrict v, int64_t n) {
  if (z.scalar) {
    const float w = zr[0];
    for (int64_t l = 0; l < n; ++l) v[l] = w * prev[l] + (1.0f - w) * v[l];
  } else if (n == kLanes) {
    const float* __restrict w = zr + j0;
    for (int64_t l = 0; l < kLanes; ++l) v[l] = w[l] * prev[l] + (1.0f - w[l]) * v[l];
  } else {
    const float* __restrict w = zr + j0;
    for (int64_t l = 0; l < n; ++l) v[l] = w[l] * prev[l] + (1.0f - w[l]) * v[l];
  }
}

// The next step's operand of row b, units [j0, j0 + nu): h_s * m_{s+1} (h_s without a mask),
// from hn, h_s of those units (the row's h_next, or the epilogue's copy of it in registers).
__attribute__((always_inline)) inline void next_operand(const FusedStep& f, int64_t b, int64_t j0, int64_t nu,
                                                        const float* __restrict hn) {
  if (!f.hm_next) return;
  const int64_t R = f.K;
  float* hm = f.hm_next + b * R + j0;
  if (f.m_next) {
    const float* m = f.m_next + b * R + j0;
    if (nu == kLanes)
      for (int64_t l = 0; l < kLanes; ++l) hm[l] = hn[l] * m[l];
    else
      for (int64_t l = 0; l < nu; ++l) hm[l] = hn[l] * m[l];
  } else {
    copy_lanes(hm, hn, nu);
  }
}

// The epilogue of one row b and the units [j0, j0 + nu): hh [4][kLanes] is the GEMM tile.
// h_s stays in registers (hs) for its three stores (y, h_next, the next operand): read back
// from y, just stored to fresh memory, it stalled the tile (~7 % of it at B = 128).
template <bool SAVE>
__attribute__((always_inline)) inline void fused_row(const FusedStep& f, int64_t b, int64_t j0, int64_t nu,
                                                     const float (*hh)[kLanes]) {
  const int64_t H = f.H, G = 4 * H, R = f.K;
  const float* cp = f.c_prev + b * H + j0;
  float* cn = f.c_new + b * H + j0;
  const float* hp = f.h_prev + b * R + j0;
  float* hn = f.h_next + b * R + j0;
  float* ar = SAVE ? f.act + b * G + j0 : nullptr;
  if (!f.rows->active(b, f.s)) {  // finished row: carry the state, emit zeros
    copy_lanes(cn, cp, nu);
    copy_lanes(hn, hp, nu);
    std::fill_n(f.y + (f.s * f.B + b) * R + j0, nu, 0.0f);
    if (SAVE)
      for (int k = 0; k < 4; ++k) std::fill_n(ar + k * H, nu, 0.0f);
    next_operand(f, b, j0, nu, hn);
    return;
  }
  const int64_t t = f.rows->pos(b, f.s);
  const float* xr = f.xp + (t * f.B + b) * G + j0;
  float* yr = f.y + (t * f.B + b) * R + j0;
  // the last unit block of an H that is no multiple of kLanes runs on padded copies
  const bool part = nu < kLanes;
  alignas(64) float hs[kLanes];
  float xs[4][kLanes], cs[kLanes], as[4][kLanes], cns[kLanes];
  if (part) {
    for (int k = 0; k < 4; ++k) {
      std::fill_n(xs[k], kLanes, 0.0f);
      std::memcpy(xs[k], xr + k * H, sizeof(float) * nu);
    }
    std::fill_n(cs, kLanes, 0.0f);
    std::memcpy(cs, cp, sizeof(float) * nu);
  }
  fused_lanes<SAVE>(part ? xs[0] : xr, part ? kLanes : H, hh, part ? cs : cp, part ? as[0] : ar,
                    part ? kLanes : H, part ? cns : cn, hs);
  if (part) {
    if (SAVE)
      for (int k = 0; k < 4; ++k) std::memcpy(ar + k * H, as[k], sizeof(float) * nu);
    std::memcpy(cn, cns, sizeof(float) * nu);
  }
  // zoneout: h from c~ first, then both states mix with their previous values
  if (f.zh.p) zoneout_lanes(f.zh, f.zh.row(f.s, b), j0, hp, hs, nu);
  if (f.zc.p) zoneout_lanes(f.zc, f.zc.row(f.s, b), j0, cp, cn, nu);
  copy_lanes(yr, hs, nu);
  copy_lanes(hn, hs, nu);
  next_operand(f, b, j0, nu, hs);
}

// The rows [b0, b0 + MR) of the epilogue of unit block j0, requested while their tile
// multiplies: each active row's four gate segments of xp (G floats apart: without this each
// missed, ~6 % of the tile at B = 128), c_{s-1} and its y (for writing).  A segment of kLanes
// floats may span two lines: both are requested.
template <int MR>
__attribute__((always_inline)) inline void prefetch_epilogue(const FusedStep& f, int64_t b0, int64_t j0) {
  const int64_t H = f.H, G = 4 * H, R = f.K;
  for (int r = 0; r < MR; ++r) {
    const int64_t b = b0 + r;
    if (!f.rows->active(b, f.s)) continue;
    const int64_t t = f.rows->pos(b, f.s);
    const float* xr = f.xp + (t * f.B + b) * G + j0;
    for (int q = 0; q < 4; ++q) {
      __builtin_prefetch(xr + q * H);
      __builtin_prefetch(xr + q * H + kLanes - 1);
    }
    __builtin_prefetch(f.c_prev + b * H + j0);
    __builtin_prefetch(f.c_prev + b * H + j0 + kLanes - 1);
    __builtin_prefetch(f.y + (t * f.B + b) * R + j0, 1);
    __builtin_prefetch(f.y + (t * f.B + b) * R + j0 + kLanes - 1, 1);
  }
}

// Batch-norm statistics of N columns (N = kLanes when FULL, else nu), stride ld between the B
// rows of v, over the rows active at step s (as column_stats: the mean, then the mean square
// deviation, each summed in row order); saved to stats [T, 2, W] at column c0 in training, else
// read from the running statistics' slot.  Gives the mean and rstd = 1 / sqrt(var + eps).
template <bool FULL>
__attribute__((always_inline)) inline void fused_bn_stats(const FusedStep& f, const FusedBN& n,
                                                          const float* __restrict v, int64_t ld, float* stats,
                                                          const float* rm, const float* rv, int64_t W, int64_t c0,
                                                          int64_t nu, float* __restrict mean, float* __restrict rstd) {
  const int64_t N = FULL ? kLanes : nu, s = f.s;
  float var[kLanes];
  if (n.train) {
    const int64_t cnt = f.rows->count(s);
    const float inv_n = cnt > 0 ? 1.0f / float(cnt) : 0.0f;
    for (int64_t l = 0; l < N; ++l) mean[l] = var[l] = 0.0f;
    for (int64_t b = 0; b < f.B; ++b)
      if (f.rows->active(b, s))
        for (int64_t l = 0; l < N; ++l) mean[l] += v[b * ld + l];
    for (int64_t l = 0; l < N; ++l) mean[l] *= inv_n;
    for (int64_t b = 0; b < f.B; ++b)
      if (f.rows->active(b, s))
        for (int64_t l = 0; l < N; ++l) {
          const float d = v[b * ld + l] - mean[l];
          var[l] += d * d;
        }
    for (int64_t l = 0; l < N; ++l) var[l] *= inv_n;
    std::memcpy(stats + (s * 2) * W + c0, mean, sizeof(float) * N);
    std::memcpy(stats + (s * 2 + 1) * W + c0, var, sizeof(float) * N);
  } else {
    const int64_t slot = std::min(n.step_offset + s, n.S - 1);
    std::memcpy(mean, rm + slot * W + c0, sizeof(float) * N);
    std::memcpy(var, rv + slot * W + c0, sizeof(float) * N);
  }
  for (int64_t l = 0; l < N; ++l) rstd[l] = gates::rsqrt_(var[l] + n.eps);
}

// Unit block u of a step under batch norm, after its tiles wrote h W_hh^T to f.hh: BN_h's
// statistics, then per row the gates from x + gamma_h x_hat and c~; BN_c's statistics of c~,
// then per row h = o tanh(gamma_c c_hat + beta_c), zoneout, y and the next operand.  The
// activated o waits in hh's o columns between the two passes.  FULL: a whole block of kLanes
// units (the statistics' loops with fixed trip counts), else the nu of the last one.
template <bool SAVE, bool FULL>
__attribute__((always_inline)) inline void fused_bn_block_(const FusedStep& f, int64_t u) {
  const FusedBN& n = *f.bn;
  const int64_t H = f.H, G = 4 * H, R = f.K, B = f.B, s = f.s;
  const int64_t j0 = u * kLanes, nu = std::min(kLanes, H - j0), N = FULL ? kLanes : nu;
  const Rows& rows = *f.rows;
  float mean[4][kLanes], rstd[4][kLanes];
  for (int q = 0; q < 4; ++q)
    fused_bn_stats<FULL>(f, n, f.hh + q * H + j0, G, n.h_stats, n.p->rm_h, n.p->rv_h, G, q * H + j0, nu, mean[q], rstd[q]);
  float* hh_hat = SAVE && n.hh_hat ? n.hh_hat + s * B * G : nullptr;
#pragma GCC unroll 1
  for (int64_t b = 0; b < B; ++b) {
    const float* cp = f.c_prev + b * H + j0;
    float* cn = f.c_new + b * H + j0;
    float* hb = f.hh + b * G + j0;
    if (!rows.active(b, s)) {  // finished row: carry the state, emit zeros
      copy_lanes(cn, cp, nu);
      copy_lanes(f.h_next + b * R + j0, f.h_prev + b * R + j0, nu);
      std::fill_n(f.y + (s * B + b) * R + j0, nu, 0.0f);
      if (SAVE)
        for (int q = 0; q < 4; ++q) {
          std::fill_n(f.act + b * G + q * H + j0, nu, 0.0f);
          if (hh_hat) std::fill_n(hh_hat + b * G + q * H + j0, nu, 0.0f);
        }
      continue;
    }
    // kLanes lanes on local copies, zero past nu: the gate functions run the same vector code
    // for every block (a scalar expf in a partial block's tail would round differently)
    const float* xr = f.xp + (rows.pos(b, s) * B + b) * G + j0;
    float x[4][kLanes], hv[4][kLanes], gh[4][kLanes], cpv[kLanes], pre[4][kLanes], xh[4][kLanes], cv[kLanes];
    for (int q = 0; q < 4; ++q) {
      load_lanes(x[q], xr + q * H, nu);
      load_lanes(hv[q], hb + q * H, nu);
      load_lanes(gh[q], n.p->gamma_h + q * H + j0, nu);
    }
    load_lanes(cpv, cp, nu);
    for (int q = 0; q < 4; ++q)
      for (int64_t l = 0; l < kLanes; ++l) {
        xh[q][l] = gates::bn_normalize(hv[q][l], mean[q][l], rstd[q][l]);
        pre[q][l] = x[q][l] + gh[q][l] * xh[q][l];
      }
    for (int64_t l = 0; l < kLanes; ++l) {
      gates::activate(pre[0][l], pre[1][l], pre[2][l], pre[3][l]);
      cv[l] = gates::cell_update(pre[0][l], pre[1][l], pre[2][l], cpv[l]);
    }
    copy_lanes(cn, cv, nu);
    if (SAVE)
      for (int q = 0; q < 4; ++q) {
        copy_lanes(f.act + b * G + q * H + j0, pre[q], nu);
        if (hh_hat) copy_lanes(hh_hat + b * G + q * H + j0, xh[q], nu);
      }
    copy_lanes(hb + 3 * H, pre[3], nu);
  }
  float mean_c[kLanes], rstd_c[kLanes];
  fused_bn_stats<FULL>(f, n, f.c_new + j0, H, n.c_stats, n.p->rm_c, n.p->rv_c, H, j0, nu, mean_c, rstd_c);
  float gc[kLanes], bc[kLanes];
  load_lanes(gc, n.p->gamma_c + j0, nu);
  load_lanes(bc, n.p->beta_c + j0, nu);
#pragma GCC unroll 1
  for (int64_t b = 0; b < B; ++b) {
    if (rows.active(b, s)) {
      const float* cp = f.c_prev + b * H + j0;
      float* cn = f.c_new + b * H + j0;
      float* yr = f.y + (rows.pos(b, s) * B + b) * R + j0;
      float cv[kLanes], o[kLanes], h[kLanes];
      load_lanes(cv, cn, nu);
      load_lanes(o, f.hh + b * G + 3 * H + j0, nu);
      for (int64_t l = 0; l < kLanes; ++l) {
        const float c_hat = gates::bn_normalize(cv[l], mean_c[l], rstd_c[l]);
        float tc;
        h[l] = gates::hidden(o[l], gc[l] * c_hat + bc[l], tc);
      }
      copy_lanes(yr, h, nu);
      if (f.zh.p) zoneout_lanes(f.zh, f.zh.row(s, b), j0, f.h_prev + b * R + j0, yr, nu);
      if (f.zc.p) zoneout_lanes(f.zc, f.zc.row(s, b), j0, cp, cn, nu);
      copy_lanes(f.h_next + b * R + j0, yr, nu);
    }
    next_operand(f, b, j0, nu, f.h_next + b * R + j0);
  }
}

template <bool SAVE>
FUSEDRNN_CPU_CLONES void fused_bn_block(const FusedStep& f, int64_t u) {
  if ((u + 1) * kLanes <= f.H) fused_bn_block_<SAVE, true>(f, u);
  else fused_bn_block_<SAVE, false>(f, u);
}

// The register tile: hh[r][q] = sum_k a[r * lda + k] * pw[(q * K + k) * kLanes ...] for rows
// r < MR and the four panels q of pw ([4][K][kLanes]), K summed in blocks of kKBlock.
template <int MR>
__attribute__((always_inline)) inline void tile_product(const float* __restrict pw, const float* __restrict a,
                                                        int64_t lda, int64_t K, float (*hh)[4][kLanes]) {
  for (int64_t kb = 0; kb < K; kb += kKBlock) {
    const int64_t ke = std::min(K, kb + kKBlock);
    Vec16 acc[4][MR];
    for (int g = 0; g < 4; ++g)
      for (int r = 0; r < MR; ++r) acc[g][r] = Vec16{};
    for (int64_t k = kb; k < ke; ++k) {
      Vec16 w[4];
      for (int g = 0; g < 4; ++g) std::memcpy(&w[g], pw + (g * K + k) * kLanes, sizeof(Vec16));
      for (int r = 0; r < MR; ++r) {
        const float ar = a[r * lda + k];
        for (int g = 0; g < 4; ++g) acc[g][r] += ar * w[g];
      }
    }
    for (int r = 0; r < MR; ++r)  // K blocks summed in a fixed order (the accuracy rule)
      for (int g = 0; g < 4; ++g) {
        Vec16 v = acc[g][r];
        if (kb > 0) {
          Vec16 prev;
          std::memcpy(&prev, hh[r][g], sizeof(Vec16));
          v = prev + v;
        }
        std::memcpy(hh[r][g], &v, sizeof(Vec16));
      }
  }
}

// Rows [b0, b0 + MR) of unit block u: the GEMM tile, then each row's epilogue.
template <int MR, bool SAVE>
FUSEDRNN_CPU_CLONES void fused_step_tile(const FusedStep& f, int64_t u, int64_t b0) {
  alignas(64) float hh[MR][4][kLanes];
  const int64_t j0 = u * kLanes, nu = std::min(kLanes, f.H - j0);
  prefetch_epilogue<MR>(f, b0, j0);
  tile_product<MR>(f.panels + u * 4 * f.K * kLanes, f.a + b0 * f.K, f.K, f.K, hh);
#pragma GCC unroll 1
  for (int r = 0; r < MR; ++r) fused_row<SAVE>(f, b0 + r, j0, nu, hh[r]);
}

// Rows [b0, b0 + MR) of unit block u under a norm: the GEMM tile into the step's hh.
template <int MR>
FUSEDRNN_CPU_CLONES void fused_norm_tile(const FusedStep& f, int64_t u, int64_t b0) {
  alignas(64) float hh[MR][4][kLanes];
  tile_product<MR>(f.panels + u * 4 * f.K * kLanes, f.a + b0 * f.K, f.K, f.K, hh);
  const int64_t H = f.H, j0 = u * kLanes, nu = std::min(kLanes, H - j0);
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < 4; ++q) std::memcpy(f.hh + (b0 + r) * 4 * H + q * H + j0, hh[r][q], sizeof(float) * nu);
}

using FusedTileFn = void (*)(const FusedStep&, int64_t, int64_t);

template <bool SAVE>
inline FusedTileFn fused_tile_for(int64_t rows) {
  static constexpr FusedTileFn fns[kFusedRows] = {fused_step_tile<1, SAVE>, fused_step_tile<2, SAVE>,
                                                 fused_step_tile<3, SAVE>, fused_step_tile<4, SAVE>,
                                                 fused_step_tile<5, SAVE>, fused_step_tile<6, SAVE>};
  return fns[rows - 1];
}

inline FusedTileFn fused_norm_tile_for(int64_t rows) {
  static constexpr FusedTileFn fns[kFusedRows] = {fused_norm_tile<1>, fused_norm_tile<2>, fused_norm_tile<3>,
                                                 fused_norm_tile<4>, fused_norm_tile<5>, fused_norm_tile<6>};
  return fns[rows - 1];
}

// How many row tiles B rows take: as few as kFusedRows allows.
inline int64_t fused_row_tile_count(int64_t B) { return (B + kFusedRows - 1) / kFusedRows; }

// The row tiles of B rows (fused_row_tile_count of them), sizes differing by at most one.
inline std::vector<std::pair<int64_t, int64_t>> fused_row_tiles(int64_t B) {
  const int64_t n = fused_row_tile_count(B);
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t i = 0, b0 = 0; i < n; ++i) {
    const int64_t mr = B / n + (i < B % n);
    tiles.push_back({b0, mr});
    b0 += mr;
  }
  return tiles;
}

// ---- the input projection where oneDNN may not take K ----

// Rows [b0, b0 + MR) of the columns [n0, n0 + 4 kLanes) of y [M, N] = x W^T + bias: the
// register tile over a group of four panels pw of W (pack_panels(W, true, 4)), K summed in
// blocks of kKBlock, the bias added to the sum; columns past N are padding.
template <int MR>
FUSEDRNN_CPU_CLONES void linear_tile(const float* pw, const float* x, int64_t K, int64_t b0, int64_t n0, int64_t N,
                                     const float* bias, float* y) {
  alignas(64) float t[MR][4][kLanes];
  tile_product<MR>(pw, x + b0 * K, K, K, t);
  const int64_t n = std::min(4 * kLanes, N - n0);
#pragma GCC unroll 1
  for (int r = 0; r < MR; ++r) {
    const float* v = &t[r][0][0];
    float* out = y + (b0 + r) * N + n0;
    if (bias)
      for (int64_t j = 0; j < n; ++j) out[j] = v[j] + bias[n0 + j];
    else
      std::memcpy(out, v, sizeof(float) * n);
  }
}

using LinearTileFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, const float*, float*);

inline LinearTileFn linear_tile_for(int64_t rows) {
  static constexpr LinearTileFn fns[kFusedRows] = {linear_tile<1>, linear_tile<2>, linear_tile<3>,
                                                   linear_tile<4>, linear_tile<5>, linear_tile<6>};
  return fns[rows - 1];
}

// y [M, N] = x [M, K] @ W^T (+ bias [N]) by the register tile, for W [N, K] packed by
// pack_panels(W, true, 4); x and y contiguous.  The float32 input projection where K >
// kOneDnnMaxK: oneDNN's single chain along K breaks the accuracy rule there, and MKL ran at
// ~157 GFLOP/s (M = 4480, K = 650, N = 2600).  Threads split the column groups (each keeps
// its panels); rows go in blocks of kLinearRowBlock, so that a block of x stays in L2 while
// a thread's groups pass over it.
constexpr int64_t kLinearRowBlock = 32 * kFusedRows;

inline void tile_linear(const float* x, const float* panels, const float* bias, float* y, int64_t M, int64_t N,
                        int64_t K) {
  const int64_t NG = (N + 4 * kLanes - 1) / (4 * kLanes);
  at::parallel_for(0, NG, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t r0 = 0; r0 < M; r0 += kLinearRowBlock) {
      const int64_t rows = std::min(kLinearRowBlock, M - r0);
      const auto tiles = fused_row_tiles(rows);
      for (int64_t g = g0; g < g1; ++g)
        for (const auto& [b0, mr] : tiles)
          linear_tile_for(mr)(panels + g * 4 * K * kLanes, x, K, r0 + b0, g * 4 * kLanes, N, bias, y);
    }
  });
}

// A barrier between the steps of one parallel region whose invocations hold slots [0, n):
// an invocation holding k slots arrives with k, and the last arrival opens the next phase.
// Its release / acquire order makes every write of a step visible to all in the next.
class StepBarrier {
 public:
  explicit StepBarrier(int64_t n) : n_(n) {}
  void arrive_and_wait(int64_t k) {
    const int64_t phase = phase_.load(std::memory_order_acquire);
    if (count_.fetch_add(k, std::memory_order_acq_rel) + k == n_) {
      count_.store(0, std::memory_order_relaxed);
      phase_.store(phase + 1, std::memory_order_release);
      return;
    }
    for (int64_t spin = 0; phase_.load(std::memory_order_acquire) == phase; ++spin) {
      if (spin < (int64_t{1} << 14)) __builtin_ia32_pause();
      else std::this_thread::yield();
    }
  }

 private:
  std::atomic<int64_t> count_{0}, phase_{0};
  const int64_t n_;
};

// The thread slots of a region of steps over `units` column blocks (each slot keeps its own):
// one, the calling thread, for a step of fewer than 2^16 multiply-adds, whose barrier costs
// more than the split saves.
inline int64_t step_slots(int64_t step_macs, int64_t units) {
  return step_macs < (int64_t{1} << 16) ? 1 : std::min<int64_t>(at::get_num_threads(), units);
}

// Steps [0, T) of the fused forward; step(s) gives step s's FusedStep.  The unit blocks are
// split into one static range per thread slot, so a thread keeps its blocks (and their panels
// in its cache) for the whole call.  With OpenMP, one parallel region runs all steps with a
// StepBarrier between them (a fork and join per step cost 2-3 us, as much as a whole step at
// B = 1); at::parallel_for calls the function once per thread of its team, each with its
// slots, all running at once, or once with every slot (nested, one thread).  Small steps run
// on the calling thread.
template <typename StepFn>
void fused_steps(int64_t T, int64_t B, int64_t H, int64_t K, const StepFn& step) {
  const auto tiles = fused_row_tiles(B);
  const int64_t U = (H + kLanes - 1) / kLanes;
  auto blocks = [&](const FusedStep& st, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      if (st.bn) {
        for (const auto& [b0, mr] : tiles) fused_norm_tile_for(mr)(st, u, b0);
        (st.act ? fused_bn_block<true> : fused_bn_block<false>)(st, u);
      } else {
        for (const auto& [b0, mr] : tiles) (st.act ? fused_tile_for<true>(mr) : fused_tile_for<false>(mr))(st, u, b0);
      }
    }
  };
  const int64_t step_macs = B * 4 * U * kLanes * K;
  const int64_t slots = step_slots(step_macs, U);
  if (slots < 2 || at::in_parallel_region()) {
    for (int64_t s = 0; s < T; ++s) blocks(step(s), 0, U);
    return;
  }
#if AT_PARALLEL_OPENMP
  StepBarrier barrier(slots);
  at::parallel_for(0, slots, 1, [&](int64_t w0, int64_t w1) {
    const int64_t u0 = U * w0 / slots, u1 = U * w1 / slots;
    for (int64_t s = 0; s < T; ++s) {
      blocks(step(s), u0, u1);
      if (s + 1 < T) barrier.arrive_and_wait(w1 - w0);
    }
  });
#else  // a thread pool may run the slots one after another: a region per step
  for (int64_t s = 0; s < T; ++s) {
    const FusedStep st = step(s);
    at::parallel_for(0, slots, 1, [&](int64_t w0, int64_t w1) { blocks(st, U * w0 / slots, U * w1 / slots); });
  }
#endif
}

// Steps i = 0 .. n - 1 in two phases split differently over the slots [0, slots): p1(i, w0, w1),
// a barrier, then p2(i, w0, w1), for an invocation holding slots [w0, w1); with `sync_after`
// a second barrier before the next step (whose p1 reads what every slot's p2 wrote), without
// it none (a slot's p1 reads only what its own p2 wrote).  One region as in fused_steps;
// slots == 1 runs serially.
template <typename P1, typename P2>
void two_phase_steps(int64_t n, int64_t slots, bool sync_after, const P1& p1, const P2& p2) {
  if (slots < 2 || at::in_parallel_region()) {
    for (int64_t i = 0; i < n; ++i) {
      p1(i, 0, slots);
      p2(i, 0, slots);
    }
    return;
  }
#if AT_PARALLEL_OPENMP
  StepBarrier barrier(slots);
  at::parallel_for(0, slots, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t i = 0; i < n; ++i) {
      p1(i, w0, w1);
      barrier.arrive_and_wait(w1 - w0);
      p2(i, w0, w1);
      if (sync_after && i + 1 < n) barrier.arrive_and_wait(w1 - w0);
    }
  });
#else  // a region per phase (see fused_steps)
  for (int64_t i = 0; i < n; ++i) {
    at::parallel_for(0, slots, 1, [&](int64_t w0, int64_t w1) { p1(i, w0, w1); });
    at::parallel_for(0, slots, 1, [&](int64_t w0, int64_t w1) { p2(i, w0, w1); });
  }
#endif
}

// Whether layer norm splits the rows between the threads for the whole step: where every
// thread gets a row tile.  Otherwise (small B) the unit split multiplies and the rows split
// the rest, two barriers a step (fused_row_steps, layer_backward_ln_rows).
inline bool ln_by_row_tiles(int64_t B) {
  return fused_row_tile_count(B) >= at::get_num_threads();
}

// Steps [0, T) of the fused forward for a norm within each row (layer norm): each step's
// products by the row tiles' norm tiles into the step's hh, then row(st, b) for each row.
// With a row tile per thread, each thread takes whole row tiles through every step: a row's
// next operand is its own h, so rows never meet and there is no barrier; each thread streams
// all of W_hh once a step (from L3 at H = 256: ~12 GB/s at B = 32), where the unit split reads
// half of it.  With fewer row tiles than threads the products split the unit blocks as in
// fused_steps and the rows split the row work, a barrier after each (two_phase_steps).
template <typename StepFn, typename RowFn>
void fused_row_steps(int64_t T, int64_t B, int64_t H, int64_t K, const StepFn& step, const RowFn& row) {
  const auto tiles = fused_row_tiles(B);
  const int64_t U = (H + kLanes - 1) / kLanes;
  auto products = [&](const FusedStep& st, int64_t b0, int64_t mr, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) fused_norm_tile_for(mr)(st, u, b0);
  };
  if (ln_by_row_tiles(B)) {
    at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t s = 0; s < T; ++s) {
        const FusedStep st = step(s);
        for (int64_t t = t0; t < t1; ++t) {
          const auto [b0, mr] = tiles[t];
          products(st, b0, mr, 0, U);
          for (int64_t b = b0; b < b0 + mr; ++b) row(st, b);
        }
      }
    });
    return;
  }
  const int64_t slots = step_slots(B * 4 * U * kLanes * K, U);
  two_phase_steps(
      T, slots, /*sync_after=*/true,
      [&](int64_t s, int64_t w0, int64_t w1) {
        const FusedStep st = step(s);
        for (const auto& [b0, mr] : tiles) products(st, b0, mr, U * w0 / slots, U * w1 / slots);
      },
      [&](int64_t s, int64_t w0, int64_t w1) {
        const FusedStep st = step(s);
        for (int64_t b = B * w0 / slots; b < B * w1 / slots; ++b) row(st, b);
      });
}

// Whether the layer op runs fused steps (the forward above, the backward's in
// layer_backward.cpp): float32 without a projection, on the default GEMM path
// (FUSEDRNN_CPU_GEMM forces the library GEMMs), with enough steps to pay for packing W_hh.
inline bool use_fused_step(const LayerDims& d, at::ScalarType dtype) {
  return dtype == at::kFloat && !d.proj && d.T >= kSmallMinSteps &&
         requested_path() == GemmPath::kOneDnn;
}

// Steps hi down to lo of the fused backward over NG groups of 4 x kLanes units: per step,
// phase_a(s, g0, g1) (the gate gradients of the units of groups [g0, g1), all rows), then,
// once every slot has finished it, phase_b(s, g0, g1) (dL/dh_{s-1} of the same columns: its
// GEMM reads every unit's gate gradients).  No barrier between phase_b(s) and phase_a(s - 1):
// a slot's phase_a reads only what its own phase_b wrote (two_phase_steps without sync_after).
template <typename PhaseA, typename PhaseB>
void fused_backward_steps(int64_t hi, int64_t lo, int64_t NG, int64_t step_macs, const PhaseA& phase_a,
                          const PhaseB& phase_b) {
  const int64_t slots = step_slots(step_macs, NG);
  two_phase_steps(
      hi - lo + 1, slots, /*sync_after=*/false,
      [&](int64_t i, int64_t w0, int64_t w1) { phase_a(hi - i, NG * w0 / slots, NG * w1 / slots); },
      [&](int64_t i, int64_t w0, int64_t w1) { phase_b(hi - i, NG * w0 / slots, NG * w1 / slots); });
}

}  // namespace cpu
}  // namespace fusedrnn
