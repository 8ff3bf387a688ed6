// Declarations of the fusedrnn:: op implementations, one set per device, and the
// argument checks they share.  Schemas live in module.cpp (TORCH_LIBRARY), the CPU
// registrations in cpu/register.cpp, the CUDA ones in cuda/register.cpp.
//
// Dimension letters: T steps, B batch, H hidden, G = 4H gates (i, f, g, o).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
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

// ---- lstm_layer: the layer recurrence op (schema and shapes in module.cpp) -------------

struct LayerDims {
  int64_t T, B, H, G, R, P, S;
  bool proj, mask, mask_per_step, lengths, bn, reverse;
};

using OptT = std::optional<at::Tensor>;

// Checks every argument of lstm_layer_forward / _backward that they share; returns the sizes.
// xp stands for the data dtype and device; T, B, G are the sizes of xp ([T, B, G]).
inline LayerDims check_layer_args(int64_t T, int64_t B, int64_t G, const at::Tensor& xp,
                                  const at::Tensor& h0, const at::Tensor& c0,
                                  const at::Tensor& w_hh, const OptT& w_hr, const OptT& mask,
                                  const OptT& lengths, bool reverse, const OptT& bn_h_weight,
                                  const OptT& bn_c_weight, const OptT& bn_c_bias) {
  LayerDims d{};
  check_float(xp, "xp");
  d.T = T;
  d.B = B;
  d.G = G;
  TORCH_CHECK(d.G % 4 == 0, "fusedrnn: xp must have 4H gate columns, got ", d.G);
  d.H = d.G / 4;
  check_dim(w_hh, 2, "w_hh");
  check_same(xp, w_hh, "xp", "w_hh");
  TORCH_CHECK(w_hh.size(0) == d.G, "fusedrnn: w_hh must have ", d.G, " rows (4H), got ", w_hh.size(0));
  d.R = w_hh.size(1);
  d.proj = w_hr.has_value();
  d.P = d.proj ? w_hr->size(0) : 0;
  if (d.proj) {
    check_dim(*w_hr, 2, "w_hr");
    check_same(xp, *w_hr, "xp", "w_hr");
    TORCH_CHECK(w_hr->size(0) == d.R && w_hr->size(1) == d.H, "fusedrnn: w_hr must have shape [",
                d.R, ", ", d.H, "], got ", w_hr->sizes());
  } else {
    TORCH_CHECK(d.R == d.H, "fusedrnn: w_hh must have shape [4H, H] = [", d.G, ", ", d.H,
                "] without projection, got ", w_hh.sizes());
  }
  check_same(xp, h0, "xp", "h0");
  check_same(xp, c0, "xp", "c0");
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == d.B && h0.size(1) == d.R,
              "fusedrnn: h0 must have shape [", d.B, ", ", d.R, "], got ", h0.sizes());
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == d.B && c0.size(1) == d.H,
              "fusedrnn: c0 must have shape [", d.B, ", ", d.H, "], got ", c0.sizes());
  d.mask = mask.has_value();
  if (d.mask) {
    check_same(xp, *mask, "xp", "mask");
    d.mask_per_step = mask->dim() == 3;
    const bool ok = d.mask_per_step
                        ? (mask->size(0) == d.T && mask->size(1) == d.B && mask->size(2) == d.R)
                        : (mask->dim() == 2 && mask->size(0) == d.B && mask->size(1) == d.R);
    TORCH_CHECK(ok, "fusedrnn: mask must have shape [", d.B, ", ", d.R, "] (shared) or [", d.T,
                ", ", d.B, ", ", d.R, "] (per step), got ", mask->sizes());
  }
  d.lengths = lengths.has_value();
  if (d.lengths) {
    TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->dim() == 1 &&
                    lengths->size(0) == d.B,
                "fusedrnn: lengths must be an int64 tensor of shape [", d.B, "], got ",
                lengths->scalar_type(), " ", lengths->sizes());
  }
  d.reverse = reverse;
  d.bn = bn_h_weight.has_value();
  TORCH_CHECK(d.bn == bn_c_weight.has_value() && d.bn == bn_c_bias.has_value(),
              "fusedrnn: bn_h_weight, bn_c_weight and bn_c_bias must be given together");
  if (d.bn) {
    check_same(xp, *bn_h_weight, "xp", "bn_h_weight");
    check_same(xp, *bn_c_weight, "xp", "bn_c_weight");
    check_same(xp, *bn_c_bias, "xp", "bn_c_bias");
    TORCH_CHECK(bn_h_weight->numel() == d.G && bn_c_weight->numel() == d.H &&
                    bn_c_bias->numel() == d.H,
                "fusedrnn: batch-norm weights must have ", d.G, ", ", d.H, " and ", d.H,
                " elements (bn_h_weight, bn_c_weight, bn_c_bias)");
  }
  return d;
}

// Running statistics (eval-mode batch norm): [S, width], at least one slot.
inline int64_t check_running(const OptT& t, int64_t width, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.has_value(), "fusedrnn: ", name, " is required for batch norm in eval mode");
  check_same(like, *t, "xp", name);
  TORCH_CHECK(t->dim() == 2 && t->size(0) >= 1 && t->size(1) == width, "fusedrnn: ", name,
              " must have shape [S, ", width, "], got ", t->sizes());
  return t->size(0);
}

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

using LayerForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LayerBackwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor>;

LayerForwardOut lstm_layer_forward_cpu(
    const at::Tensor& xp, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
    const OptT& w_hr, const OptT& mask, const OptT& lengths, bool reverse, const OptT& bn_h_weight,
    const OptT& bn_c_weight, const OptT& bn_c_bias, const OptT& bn_h_running_mean,
    const OptT& bn_h_running_var, const OptT& bn_c_running_mean, const OptT& bn_c_running_var,
    bool bn_training, int64_t bn_step_offset, double bn_eps, bool save_workspace);

LayerBackwardOut lstm_layer_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& w_hh, const OptT& w_hr, const OptT& mask, const OptT& lengths, bool reverse,
    const OptT& bn_h_weight, const OptT& bn_c_weight, const OptT& bn_c_bias,
    const OptT& bn_h_running_var, const OptT& bn_c_running_mean, const OptT& bn_c_running_var,
    bool bn_training, int64_t bn_step_offset, double bn_eps, const at::Tensor& h_stats,
    const at::Tensor& c_stats, const at::Tensor& ws_hm, const at::Tensor& ws_act,
    const at::Tensor& ws_c, const at::Tensor& ws_hh_hat, const at::Tensor& ws_hc);

// ---- batch_norm_steps: per-step batch norm over [T, B, F] (schema in module.cpp) ---------
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_steps_forward_cpu(
    const at::Tensor& v, const at::Tensor& weight, const OptT& bias, const OptT& lengths,
    bool reverse, const OptT& eval_mean, const OptT& eval_var, bool training, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_steps_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& v, const at::Tensor& weight, const OptT& lengths,
    bool reverse, const at::Tensor& mean, const at::Tensor& var, bool training, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(const at::Tensor& gates,
                                                                     const at::Tensor& cx);
std::tuple<at::Tensor, at::Tensor> lstm_cell_backward_cpu(const at::Tensor& grad_hy,
                                                          const at::Tensor& grad_cy,
                                                          const at::Tensor& act,
                                                          const at::Tensor& cx,
                                                          const at::Tensor& cy);

}  // namespace fusedrnn
