// CPU kernel of the fused LSTM cell pointwise step (fusedrnn::lstm_cell_forward/backward).
// Dimension letters: B batch, H hidden, G = 4H gates (i, f, g, o).
// Parallel over batch rows with at::parallel_for; the inner loop over hidden units is
// contiguous in memory so the compiler can vectorise it.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "../gates.h"
#include "../ops.h"

namespace fusedrnn {

namespace {

// Rows b of [0, B) in parallel chunks of about 16K gate values; fn(b) does one row.
template <typename Fn>
void for_rows(int64_t B, int64_t G, Fn&& fn) {
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(G, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(b);
  });
}

template <typename scalar_t, typename acc_t>
void cell_forward_kernel(const scalar_t* gates, const scalar_t* cx, scalar_t* hy,
                         scalar_t* cy, acc_t* act, int64_t B, int64_t H) {
  const int64_t G = 4 * H;
  for_rows(B, G, [&](int64_t b) {
    const scalar_t* gr = gates + b * G;
    acc_t* ar = act + b * G;
    for (int64_t j = 0; j < H; ++j) {
      acc_t a[4], c, h;
      for (int k = 0; k < 4; ++k) a[k] = static_cast<acc_t>(gr[k * H + j]);
      gates::cell_step(a[0], a[1], a[2], a[3], static_cast<acc_t>(cx[b * H + j]), c, h);
      for (int k = 0; k < 4; ++k) ar[k * H + j] = a[k];
      cy[b * H + j] = static_cast<scalar_t>(c);
      hy[b * H + j] = static_cast<scalar_t>(h);
    }
  });
}

template <typename scalar_t, typename acc_t>
void cell_backward_kernel(const scalar_t* grad_hy, const scalar_t* grad_cy, const acc_t* act,
                          const scalar_t* cx, const scalar_t* cy, scalar_t* grad_gates,
                          scalar_t* grad_cx, int64_t B, int64_t H) {
  const int64_t G = 4 * H;
  for_rows(B, G, [&](int64_t b) {
    const acc_t* ar = act + b * G;
    scalar_t* dg = grad_gates + b * G;
    for (int64_t j = 0; j < H; ++j) {
      const int64_t k = b * H + j;
      acc_t d[4], dc_prev;
      gates::cell_step_backward(ar[j], ar[H + j], ar[2 * H + j], ar[3 * H + j], static_cast<acc_t>(cx[k]),
                                static_cast<acc_t>(cy[k]), static_cast<acc_t>(grad_hy[k]),
                                static_cast<acc_t>(grad_cy[k]), d, dc_prev);
      for (int q = 0; q < 4; ++q) dg[q * H + j] = static_cast<scalar_t>(d[q]);
      grad_cx[k] = static_cast<scalar_t>(dc_prev);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(const at::Tensor& gates,
                                                                     const at::Tensor& cx) {
  CellForward c(gates, cx);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.cx.scalar_type(), "lstm_cell_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cell_forward_kernel<scalar_t, acc_t>(c.gates.data_ptr<scalar_t>(), c.cx.data_ptr<scalar_t>(),
                                         c.hy.data_ptr<scalar_t>(), c.cy.data_ptr<scalar_t>(),
                                         c.act.data_ptr<acc_t>(), c.B, c.H);
  });
  return {c.hy, c.cy, c.act};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward_cpu(const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                                                          const at::Tensor& act, const at::Tensor& cx,
                                                          const at::Tensor& cy) {
  CellBackward c(grad_hy, grad_cy, act, cx, cy);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.cx.scalar_type(), "lstm_cell_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cell_backward_kernel<scalar_t, acc_t>(
        c.grad_hy.data_ptr<scalar_t>(), c.grad_cy.data_ptr<scalar_t>(), c.act.data_ptr<acc_t>(),
        c.cx.data_ptr<scalar_t>(), c.cy.data_ptr<scalar_t>(), c.grad_gates.data_ptr<scalar_t>(),
        c.grad_cx.data_ptr<scalar_t>(), c.B, c.H);
  });
  return {c.grad_gates, c.grad_cx};
}

}  // namespace fusedrnn
