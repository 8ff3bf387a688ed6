// Declarations of the fusedrnn:: op implementations, one set per device, and the
// argument checks they share.  Schemas live in module.cpp (TORCH_LIBRARY), the CPU
// registrations in cpu/register.cpp, the CUDA ones in cuda/register.cpp.
//
// Dimension letters: T steps, B batch, H hidden, G = 4H gates (i, f, g, o).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(const at::Tensor& gates,
                                                                     const at::Tensor& cx);
std::tuple<at::Tensor, at::Tensor> lstm_cell_backward_cpu(const at::Tensor& grad_hy,
                                                          const at::Tensor& grad_cy,
                                                          const at::Tensor& act,
                                                          const at::Tensor& cx,
                                                          const at::Tensor& cy);

}  // namespace fusedrnn
