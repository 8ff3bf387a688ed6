// Declarations of the fusedrnn:: op implementations, one set per device, and the
// argument checks they share.  Schemas live in module.cpp (TORCH_LIBRARY), the CPU
// registrations in cpu/register.cpp, the CUDA ones in cuda/register.cpp.
//
// Dimension letters: T steps, B batch, H hidden, G = 4H gates (i, f, g, o).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"

namespace fusedrnn {

// ---- lstm_cell: the fused pointwise step of one LSTM cell ---------------------------
// forward(gates [B, G] pre-activations, cx [B, H]) -> (hy [B, H], cy [B, H], act [B, G])
//   act holds the activated gates (sigmoid i, f, o; tanh g) in the accumulation dtype.
// backward(grad_hy [B, H], grad_cy [B, H], act [B, G], cx [B, H], cy [B, H])
//   -> (grad_gates [B, G], grad_cx [B, H])

inline void check_cell_forward_args(const at::Tensor& gates, const at::Tensor& cx) {
  check_float(gates, "gates");
  check_dim(gates, 2, "gates");
  check_dim(cx, 2, "cx");
  check_same(gates, cx, "gates", "cx");
  TORCH_CHECK(gates.size(1) == 4 * cx.size(1) && gates.size(0) == cx.size(0),
              "fusedrnn: gates must have shape [B, 4H] for cx of shape [B, H] = ", cx.sizes(),
              ", got ", gates.sizes());
}

inline void check_cell_backward_args(const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                                     const at::Tensor& act, const at::Tensor& cx,
                                     const at::Tensor& cy) {
  check_float(cx, "cx");
  check_dim(cx, 2, "cx");
  for (const auto* t : {&grad_hy, &grad_cy, &cy}) {
    TORCH_CHECK(t->sizes() == cx.sizes(), "fusedrnn: lstm_cell_backward expects grad_hy, ",
                "grad_cy and cy of shape ", cx.sizes(), ", got ", t->sizes());
    check_same(cx, *t, "cx", "grad_hy/grad_cy/cy");
  }
  TORCH_CHECK(act.dim() == 2 && act.size(0) == cx.size(0) && act.size(1) == 4 * cx.size(1),
              "fusedrnn: act must have shape [B, 4H], got ", act.sizes());
  TORCH_CHECK(act.scalar_type() == acc_type_of(cx.scalar_type()),
              "fusedrnn: act must be in the accumulation dtype ",
              acc_type_of(cx.scalar_type()), ", got ", act.scalar_type());
}

// The cell ops' contiguous inputs and fresh outputs, arguments checked (both devices).
struct CellForward {
  at::Tensor gates, cx, hy, cy, act;
  int64_t B, H;
  CellForward(const at::Tensor& gates_in, const at::Tensor& cx_in) {
    check_cell_forward_args(gates_in, cx_in);
    gates = gates_in.contiguous();
    cx = cx_in.contiguous();
    B = cx.size(0), H = cx.size(1);
    hy = new_output({B, H}, cx.options());
    cy = new_output({B, H}, cx.options());
    act = new_output({B, 4 * H}, cx.options().dtype(acc_type_of(cx.scalar_type())));
  }
};

struct CellBackward {
  at::Tensor grad_hy, grad_cy, act, cx, cy, grad_gates, grad_cx;
  int64_t B, H;
  CellBackward(const at::Tensor& grad_hy_in, const at::Tensor& grad_cy_in, const at::Tensor& act_in,
               const at::Tensor& cx_in, const at::Tensor& cy_in) {
    check_cell_backward_args(grad_hy_in, grad_cy_in, act_in, cx_in, cy_in);
    grad_hy = grad_hy_in.contiguous(), grad_cy = grad_cy_in.contiguous(), act = act_in.contiguous();
    cx = cx_in.contiguous(), cy = cy_in.contiguous();
    B = cx.size(0), H = cx.size(1);
    grad_gates = new_output({B, 4 * H}, cx.options());
    grad_cx = new_output({B, H}, cx.options());
  }
};

// ---- lstm_layer: the layer recurrence op (schema and shapes in module.cpp) -------------

using OptT = std::optional<at::Tensor>;

// The encodings of the op contract (fusedrnn/ops/contract.py: MaskMode, NormMode).
enum MaskMode : int64_t { kMaskNone = 0, kMaskShared = 1, kMaskPerStep = 2 };
enum NormMode : int64_t { kNormNone = 0, kNormBatchTrain = 1, kNormBatchEval = 2, kNormLayer = 3 };

// The parameter arguments of lstm_layer_forward and lstm_layer_backward, in schema order
// (both ops take them, after their three data tensors).
struct LayerArgs {
  const at::Tensor& w_hh;
  const OptT& w_hr;
  const OptT& mask;
  int64_t mask_mode;
  const OptT& lengths;
  bool reverse;
  int64_t norm_mode;
  const OptT& norm_h_weight;
  const OptT& norm_c_weight;
  const OptT& norm_c_bias;
  const OptT& bn_h_running_mean;
  const OptT& bn_h_running_var;
  const OptT& bn_c_running_mean;
  const OptT& bn_c_running_var;
  int64_t bn_step_offset;
  double norm_eps;
  const OptT& zoneout_c;
  const OptT& zoneout_h;
};

struct LayerDims {
  int64_t T, B, H, G, R, P;
  int64_t S;  // running-statistics slots (eval-mode batch norm), else 1
  bool proj, mask, mask_per_step, lengths, bn, bn_train, reverse;
  bool ln;  // layer norm (LN_h over each row's G columns, LN_c over its H): gains and LN_c's bias in norm_*
  bool zoneout;
};

// A zoneout weight [T, B, W] as given: every element (strides of a contiguous tensor), or one
// value for all (an expanded scalar: eval mode's rate).
inline bool is_broadcast_scalar(const at::Tensor& t) {
  for (int64_t k = 0; k < t.dim(); ++k)
    if (t.stride(k) != 0 && t.size(k) != 1) return false;
  return true;
}

// Running statistics (eval-mode batch norm): [S, width], at least one slot.
inline int64_t check_running(const OptT& t, int64_t width, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.has_value(), "fusedrnn: ", name, " is required for batch norm in eval mode");
  check_same(like, *t, "xp", name);
  TORCH_CHECK(t->dim() == 2 && t->size(0) >= 1 && t->size(1) == width, "fusedrnn: ", name,
              " must have shape [S, ", width, "], got ", t->sizes());
  return t->size(0);
}

// The checks both cells' layer ops share, on d's T, B and R: the mask and its mode, the
// lengths, the direction, the norm mode and the step offset of batch norm's statistics.
inline void check_step_args(LayerDims& d, const at::Tensor& like, const LayerArgs& a) {
  TORCH_CHECK(a.mask_mode >= kMaskNone && a.mask_mode <= kMaskPerStep,
              "fusedrnn: mask_mode must be 0 (none), 1 (shared) or 2 (per step), got ", a.mask_mode);
  d.mask = a.mask_mode != kMaskNone;
  TORCH_CHECK(d.mask == a.mask.has_value(), "fusedrnn: mask_mode ", a.mask_mode,
              (d.mask ? " needs a mask" : " takes no mask"));
  if (d.mask) {
    check_same(like, *a.mask, "xp", "mask");
    d.mask_per_step = a.mask_mode == kMaskPerStep;
    const at::Tensor& m = *a.mask;
    const bool ok = d.mask_per_step
                        ? (m.dim() == 3 && m.size(0) == d.T && m.size(1) == d.B && m.size(2) == d.R)
                        : (m.dim() == 2 && m.size(0) == d.B && m.size(1) == d.R);
    TORCH_CHECK(ok, "fusedrnn: mask must have shape ",
                d.mask_per_step ? "[T, B, R] (per step) = [" : "[B, R] (shared) = [",
                d.mask_per_step ? std::to_string(d.T) + ", " : std::string(), d.B, ", ", d.R, "], got ",
                m.sizes());
  }
  d.lengths = a.lengths.has_value();
  if (d.lengths) {
    TORCH_CHECK(a.lengths->scalar_type() == at::kLong && a.lengths->dim() == 1 && a.lengths->size(0) == d.B,
                "fusedrnn: lengths must be an int64 tensor of shape [", d.B, "], got ",
                a.lengths->scalar_type(), " ", a.lengths->sizes());
  }
  d.reverse = a.reverse;
  TORCH_CHECK(a.norm_mode >= kNormNone && a.norm_mode <= kNormLayer,
              "fusedrnn: norm_mode must be 0 (none), 1 (batch norm, training), 2 (batch norm, eval) or 3 (layer "
              "norm), got ",
              a.norm_mode);
  d.bn = a.norm_mode == kNormBatchTrain || a.norm_mode == kNormBatchEval;
  d.bn_train = a.norm_mode == kNormBatchTrain;
  d.ln = a.norm_mode == kNormLayer;
  TORCH_CHECK(a.bn_step_offset >= 0, "fusedrnn: bn_step_offset must be >= 0");
}

// A per-step tensor such as a zoneout weight: [T, B, W], on like's device and dtype.
inline void check_steps(const at::Tensor& like, const at::Tensor& t, const LayerDims& d, int64_t W,
                        const char* name) {
  check_same(like, t, "xp", name);
  TORCH_CHECK(t.dim() == 3 && t.size(0) == d.T && t.size(1) == d.B && t.size(2) == W, "fusedrnn: ", name,
              " must have shape [T, B, ", W, "] = [", d.T, ", ", d.B, ", ", W, "], got ", t.sizes());
}

// Checks every argument the layer ops share and returns the sizes.  like stands for the data
// dtype and device (xp forward, grad_y backward); [T, B, G] are xp's sizes; h0 / c0 (or their
// gradients) are [B, R] / [B, H].
inline LayerDims check_layer_args(int64_t T, int64_t B, int64_t G, const at::Tensor& like,
                                  const at::Tensor& h0, const at::Tensor& c0, const LayerArgs& a) {
  LayerDims d{};
  check_float(like, "xp");
  d.T = T;
  d.B = B;
  d.G = G;
  TORCH_CHECK(d.G % 4 == 0, "fusedrnn: xp must have 4H gate columns, got ", d.G);
  d.H = d.G / 4;
  check_dim(a.w_hh, 2, "w_hh");
  check_same(like, a.w_hh, "xp", "w_hh");
  TORCH_CHECK(a.w_hh.size(0) == d.G, "fusedrnn: w_hh must have ", d.G, " rows (4H), got ", a.w_hh.size(0));
  d.R = a.w_hh.size(1);
  d.proj = a.w_hr.has_value();
  d.P = d.proj ? a.w_hr->size(0) : 0;
  if (d.proj) {
    check_dim(*a.w_hr, 2, "w_hr");
    check_same(like, *a.w_hr, "xp", "w_hr");
    TORCH_CHECK(a.w_hr->size(0) == d.R && a.w_hr->size(1) == d.H, "fusedrnn: w_hr must have shape [",
                d.R, ", ", d.H, "], got ", a.w_hr->sizes());
  } else {
    TORCH_CHECK(d.R == d.H, "fusedrnn: w_hh must have shape [4H, H] = [", d.G, ", ", d.H,
                "] without projection, got ", a.w_hh.sizes());
  }
  check_same(like, h0, "xp", "h0");
  check_same(like, c0, "xp", "c0");
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == d.B && h0.size(1) == d.R,
              "fusedrnn: h0 must have shape [", d.B, ", ", d.R, "], got ", h0.sizes());
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == d.B && c0.size(1) == d.H,
              "fusedrnn: c0 must have shape [", d.B, ", ", d.H, "], got ", c0.sizes());
  check_step_args(d, like, a);
  const bool norm = d.bn || d.ln;
  TORCH_CHECK(norm == a.norm_h_weight.has_value() && norm == a.norm_c_weight.has_value() &&
                  norm == a.norm_c_bias.has_value(),
              "fusedrnn: norm_h_weight, norm_c_weight and norm_c_bias go with batch or layer norm (norm_mode ", a.norm_mode,
              ")");
  if (norm) {
    check_same(like, *a.norm_h_weight, "xp", "norm_h_weight");
    check_same(like, *a.norm_c_weight, "xp", "norm_c_weight");
    check_same(like, *a.norm_c_bias, "xp", "norm_c_bias");
    TORCH_CHECK(a.norm_h_weight->numel() == d.G && a.norm_c_weight->numel() == d.H && a.norm_c_bias->numel() == d.H,
                "fusedrnn: norm weights must have ", d.G, ", ", d.H, " and ", d.H,
                " elements (norm_h_weight, norm_c_weight, norm_c_bias)");
  }
  d.zoneout = a.zoneout_c.has_value();
  TORCH_CHECK(d.zoneout == a.zoneout_h.has_value(), "fusedrnn: zoneout_c and zoneout_h go together");
  if (d.zoneout) {
    check_steps(like, *a.zoneout_c, d, d.H, "zoneout_c");
    check_steps(like, *a.zoneout_h, d, d.R, "zoneout_h");
  }
  d.S = 1;
  if (d.bn && !d.bn_train) {
    d.S = check_running(a.bn_h_running_mean, d.G, like, "bn_h_running_mean");
    TORCH_CHECK(check_running(a.bn_h_running_var, d.G, like, "bn_h_running_var") == d.S &&
                    check_running(a.bn_c_running_mean, d.H, like, "bn_c_running_mean") == d.S &&
                    check_running(a.bn_c_running_var, d.H, like, "bn_c_running_var") == d.S,
                "fusedrnn: running statistics must all have the same number of slots");
  }
  return d;
}

// The GRU's layer op (gru_layer_forward / _backward) takes a subset of the LSTM's parameters:
// no projection, no N_c, no zoneout of c; LayerArgs carries them absent.  Checks them and b_hh
// [G] (G = 3H) and returns the sizes (R = H).  like, h0: as check_layer_args.
inline LayerDims check_gru_args(int64_t T, int64_t B, int64_t G, const at::Tensor& like, const at::Tensor& h0,
                                const LayerArgs& a, const OptT& b_hh) {
  LayerDims d{};
  check_float(like, "xp");
  d.T = T;
  d.B = B;
  d.G = G;
  TORCH_CHECK(G % 3 == 0, "fusedrnn: xp must have 3H gate columns (r, z, n), got ", G);
  d.H = d.R = G / 3;
  check_dim(a.w_hh, 2, "w_hh");
  check_same(like, a.w_hh, "xp", "w_hh");
  TORCH_CHECK(a.w_hh.size(0) == G && a.w_hh.size(1) == d.H, "fusedrnn: w_hh must have shape [3H, H] = [", G, ", ",
              d.H, "], got ", a.w_hh.sizes());
  check_same(like, h0, "xp", "h0");
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == d.H, "fusedrnn: h0 must have shape [", B, ", ",
              d.H, "], got ", h0.sizes());
  if (b_hh.has_value()) {
    check_same(like, *b_hh, "xp", "b_hh");
    TORCH_CHECK(b_hh->numel() == G, "fusedrnn: b_hh must have ", G, " elements, got ", b_hh->numel());
  }
  check_step_args(d, like, a);
  TORCH_CHECK((d.bn || d.ln) == a.norm_h_weight.has_value(), "fusedrnn: norm_h_weight goes with batch or layer "
              "norm (norm_mode ", a.norm_mode, ")");
  if (a.norm_h_weight.has_value()) {
    check_same(like, *a.norm_h_weight, "xp", "norm_h_weight");
    TORCH_CHECK(a.norm_h_weight->numel() == G, "fusedrnn: norm_h_weight must have ", G, " elements");
  }
  d.zoneout = a.zoneout_h.has_value();
  if (d.zoneout) check_steps(like, *a.zoneout_h, d, d.H, "zoneout_h");
  d.S = 1;
  if (d.bn && !d.bn_train) {
    d.S = check_running(a.bn_h_running_mean, G, like, "bn_h_running_mean");
    TORCH_CHECK(check_running(a.bn_h_running_var, G, like, "bn_h_running_var") == d.S,
                "fusedrnn: running statistics must all have the same number of slots");
  }
  return d;
}

inline OptT contiguous_opt(const OptT& t) { return t.has_value() ? OptT(t->contiguous()) : OptT(); }

// The parameter tensors of a layer op call, contiguous; the running statistics only for
// eval-mode batch norm.  Named members: the kernels read their pointers after the call.
struct LayerTensors {
  at::Tensor w_hh;
  OptT w_hr, mask, norm_h_weight, norm_c_weight, norm_c_bias, rm_h, rv_h, rm_c, rv_c;
  OptT zoneout_c, zoneout_h;  // contiguous, or kept as an expanded scalar (is_broadcast_scalar)

  static OptT zoneout_opt(const OptT& t) {
    if (!t.has_value() || t->numel() == 0 || is_broadcast_scalar(*t)) return t;
    return t->contiguous();
  }

  LayerTensors(const LayerDims& d, const LayerArgs& a)
      : w_hh(a.w_hh.contiguous()),
        w_hr(contiguous_opt(a.w_hr)),
        mask(contiguous_opt(a.mask)),
        norm_h_weight(contiguous_opt(a.norm_h_weight)),
        norm_c_weight(contiguous_opt(a.norm_c_weight)),
        norm_c_bias(contiguous_opt(a.norm_c_bias)),
        zoneout_c(zoneout_opt(a.zoneout_c)),
        zoneout_h(zoneout_opt(a.zoneout_h)) {
    if (d.bn && !d.bn_train) {
      rm_h = a.bn_h_running_mean->contiguous();
      rv_h = a.bn_h_running_var->contiguous();
      rm_c = contiguous_opt(a.bn_c_running_mean);  // (absent for the GRU)
      rv_c = contiguous_opt(a.bn_c_running_var);
    }
  }
};

// Sequence lengths on the CPU, checked to lie in [0, T].
inline std::vector<int64_t> lengths_vector(const OptT& lengths, int64_t B, int64_t T) {
  std::vector<int64_t> len(B, T);
  if (lengths.has_value()) {
    const at::Tensor l = lengths->to(at::kCPU).contiguous();
    const int64_t* p = l.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(p[b] >= 0 && p[b] <= T, "fusedrnn: lengths must lie in [0, T = ", T, "], got ",
                  p[b], " for row ", b);
      len[b] = p[b];
    }
  }
  return len;
}

// What the layer forward saves for the backward (its save_workspace): nothing (no backward
// follows), the whole workspace, or all but ws_hh_hat under a norm (returned empty: the
// backward recomputes N_h's normalised products from ws_h, W_hh and the saved statistics;
// the CPU kernel only).
constexpr int64_t kSaveNone = 0, kSaveAll = 1, kSaveRecomputeNorm = 2;

using LayerForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LayerBackwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor>;

// The layer op's parameter arguments and backward tail, as declarations and as names.
#define FUSEDRNN_LAYER_ARGS_DECL                                                                     \
  const at::Tensor &w_hh, const OptT &w_hr, const OptT &mask, int64_t mask_mode, const OptT &lengths, \
      bool reverse, int64_t norm_mode, const OptT &norm_h_weight, const OptT &norm_c_weight,             \
      const OptT &norm_c_bias, const OptT &bn_h_running_mean, const OptT &bn_h_running_var,              \
      const OptT &bn_c_running_mean, const OptT &bn_c_running_var, int64_t bn_step_offset, double norm_eps,  \
      const OptT &zoneout_c, const OptT &zoneout_h
#define FUSEDRNN_LAYER_ARGS \
  LayerArgs { FUSEDRNN_LAYER_ARG_NAMES }
#define FUSEDRNN_LAYER_ARG_NAMES                                                                      \
  w_hh, w_hr, mask, mask_mode, lengths, reverse, norm_mode, norm_h_weight, norm_c_weight, norm_c_bias,        \
      bn_h_running_mean, bn_h_running_var, bn_c_running_mean, bn_c_running_var, bn_step_offset, norm_eps,   \
      zoneout_c, zoneout_h
#define FUSEDRNN_LAYER_BACKWARD_TAIL_NAMES h_stats, c_stats, ws_h, ws_act, ws_c, ws_hh_hat, ws_hc
#define FUSEDRNN_LAYER_BACKWARD_TAIL_DECL                                                              \
  const at::Tensor &h_stats, const at::Tensor &c_stats, const at::Tensor &ws_h, const at::Tensor &ws_act, \
      const at::Tensor &ws_c, const at::Tensor &ws_hh_hat, const at::Tensor &ws_hc

// The GRU layer op's parameter arguments (module.cpp FUSEDRNN_GRU_PARAMS), its outputs, and
// the LayerArgs they make (the LSTM's parts a GRU lacks absent).
#define FUSEDRNN_GRU_ARGS_DECL                                                                          \
  const at::Tensor &w_hh, const OptT &b_hh, const OptT &mask, int64_t mask_mode, const OptT &lengths,      \
      bool reverse, int64_t norm_mode, const OptT &norm_h_weight, const OptT &bn_h_running_mean,           \
      const OptT &bn_h_running_var, int64_t bn_step_offset, double norm_eps, const OptT &zoneout_h
#define FUSEDRNN_GRU_LAYER_ARGS(none)                                                                    \
  LayerArgs {                                                                                            \
    w_hh, none, mask, mask_mode, lengths, reverse, norm_mode, norm_h_weight, none, none, bn_h_running_mean, \
        bn_h_running_var, none, none, bn_step_offset, norm_eps, none, zoneout_h                            \
  }
using GruForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                 at::Tensor, at::Tensor>;
using GruBackwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// ---- gru_layer: the GRU's layer recurrence op (CPU only for now; schema in module.cpp) --------
// forward(xp [T, B, 3H], h0 [B, H], GRU params, save_workspace (kSave*))
//   -> (y, h_n, h_stats, ws_h, ws_gates, ws_hs, ws_hh_hat, ws_hn)
// backward(grad_y, grad_h_n, GRU params, h_stats, ws_h, ws_gates, ws_hs, ws_hh_hat, ws_hn)
//   -> (grad_xp, grad_h0, grad_w_hh, grad_b_hh, grad_norm_h_weight)
GruForwardOut gru_layer_forward_cpu(const at::Tensor& xp, const at::Tensor& h0, FUSEDRNN_GRU_ARGS_DECL,
                                    int64_t save_workspace);
GruBackwardOut gru_layer_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_h_n, FUSEDRNN_GRU_ARGS_DECL,
                                      const at::Tensor& h_stats, const at::Tensor& ws_h, const at::Tensor& ws_gates,
                                      const at::Tensor& ws_hs, const at::Tensor& ws_hh_hat, const at::Tensor& ws_hn);

// The implementations of the ops both devices run, one signature for both: fusedrnn::<op>_cpu
// (cpu/*.cpp) and fusedrnn::<op>_cuda (cuda/*_host.cpp, built with CUDA only); schemas in
// module.cpp.  The layer op (lstm_layer_forward / _backward): the three data tensors, the
// LayerArgs in order, then save_workspace (forward: kSave*) or the statistics and the
// workspace (backward).  batch_norm_steps: per-step batch norm over [T, B, F].  lstm_cell: one pointwise step.
#define FUSEDRNN_DEVICE_OPS(DEV)                                                                            \
  LayerForwardOut lstm_layer_forward_##DEV(const at::Tensor& xp, const at::Tensor& h0, const at::Tensor& c0,  \
                                           FUSEDRNN_LAYER_ARGS_DECL, int64_t save_workspace);                \
  LayerBackwardOut lstm_layer_backward_##DEV(const at::Tensor& grad_y, const at::Tensor& grad_h_n,           \
                                             const at::Tensor& grad_c_n, FUSEDRNN_LAYER_ARGS_DECL,           \
                                             FUSEDRNN_LAYER_BACKWARD_TAIL_DECL);                             \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_steps_forward_##DEV(                             \
      const at::Tensor& v, const at::Tensor& weight, const OptT& bias, const OptT& lengths, bool reverse,    \
      const OptT& eval_mean, const OptT& eval_var, bool training, double eps);                               \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_steps_backward_##DEV(                            \
      const at::Tensor& grad_out, const at::Tensor& v, const at::Tensor& weight, const OptT& lengths,        \
      bool reverse, const at::Tensor& mean, const at::Tensor& var, bool training, double eps);               \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_##DEV(const at::Tensor& gates,            \
                                                                         const at::Tensor& cx);              \
  std::tuple<at::Tensor, at::Tensor> lstm_cell_backward_##DEV(const at::Tensor& grad_hy,                     \
                                                              const at::Tensor& grad_cy, const at::Tensor& act, \
                                                              const at::Tensor& cx, const at::Tensor& cy);
FUSEDRNN_DEVICE_OPS(cpu)
FUSEDRNN_DEVICE_OPS(cuda)

// ---- linear: the input projection of the native backend (CPU only; schema in module.cpp) ------
at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const OptT& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                   const at::Tensor& weight, bool bias, bool grad_x);

// ---- drop_connect: DropConnect's masked weight from the generator's words (CPU only) ------------
at::Tensor drop_connect_cpu(const at::Tensor& weight, const at::Tensor& words, int64_t low, int64_t top, double keep);

// ---- CUDA only (cuda/layer_host.cpp; schemas in module.cpp) -----------------------------------
// fusedrnn::cuda_persistent_layout: the CUDA design the layer op picks for a shape, and why.
std::tuple<bool, std::string, int64_t, int64_t, int64_t, int64_t> cuda_persistent_layout_cuda(
    const at::Tensor& like, int64_t B, int64_t H, int64_t R, bool proj, bool need_backward);
// fusedrnn::_cuda_launch_refused: what the layer op's host does after a persistent launch that
// returned err (a cudaError_t code), on a stub shape of no device, so that a test can run it
// without a GPU: false for cudaSuccess (it ran); true for a refusal (the stub shape's layout no
// longer fits: its later calls run the per-step design; a warning); raises for any other error.
bool cuda_launch_refused(int64_t err);

}  // namespace fusedrnn
