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

template <typename scalar_t, typename acc_t>
void cell_forward_kernel(const scalar_t* gates, const scalar_t* cx, scalar_t* hy,
                         scalar_t* cy, acc_t* act, int64_t B, int64_t H) {
  const int64_t G = 4 * H;
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(G, 1)),
                   [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* gr = gates + b * G;
      acc_t* ar = act + b * G;
      for (int64_t j = 0; j < H; ++j) {
        acc_t i = static_cast<acc_t>(gr[j]);
        acc_t f = static_cast<acc_t>(gr[H + j]);
        acc_t g = static_cast<acc_t>(gr[2 * H + j]);
        acc_t o = static_cast<acc_t>(gr[3 * H + j]);
        gates::activate(i, f, g, o);
        const acc_t c = gates::cell_update(i, f, g, static_cast<acc_t>(cx[b * H + j]));
        acc_t tc;
        const acc_t h = gates::hidden(o, c, tc);
        ar[j] = i;
        ar[H + j] = f;
        ar[2 * H + j] = g;
        ar[3 * H + j] = o;
        cy[b * H + j] = static_cast<scalar_t>(c);
        hy[b * H + j] = static_cast<scalar_t>(h);
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void cell_backward_kernel(const scalar_t* grad_hy, const scalar_t* grad_cy, const acc_t* act,
                          const scalar_t* cx, const scalar_t* cy, scalar_t* grad_gates,
                          scalar_t* grad_cx, int64_t B, int64_t H) {
  const int64_t G = 4 * H;
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(G, 1)),
                   [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const acc_t* ar = act + b * G;
      scalar_t* dg = grad_gates + b * G;
      for (int64_t j = 0; j < H; ++j) {
        const int64_t k = b * H + j;
        const acc_t i = ar[j], f = ar[H + j], g = ar[2 * H + j], o = ar[3 * H + j];
        const acc_t tc = gates::tanh_(static_cast<acc_t>(cy[k]));
        acc_t dpre_o, dc_h;
        gates::hidden_backward(static_cast<acc_t>(grad_hy[k]), o, tc, dpre_o, dc_h);
        const acc_t dc = static_cast<acc_t>(grad_cy[k]) + dc_h;
        acc_t dpre_i, dpre_f, dpre_g, dc_prev;
        gates::cell_backward(dc, i, f, g, static_cast<acc_t>(cx[k]), dpre_i, dpre_f, dpre_g,
                             dc_prev);
        dg[j] = static_cast<scalar_t>(dpre_i);
        dg[H + j] = static_cast<scalar_t>(dpre_f);
        dg[2 * H + j] = static_cast<scalar_t>(dpre_g);
        dg[3 * H + j] = static_cast<scalar_t>(dpre_o);
        grad_cx[k] = static_cast<scalar_t>(dc_prev);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(const at::Tensor& gates_in,
                                                                     const at::Tensor& cx_in) {
  check_cell_forward_args(gates_in, cx_in);
  const at::Tensor gates = gates_in.contiguous();
  const at::Tensor cx = cx_in.contiguous();
  const int64_t B = cx.size(0), H = cx.size(1);
  at::Tensor hy = new_output({B, H}, cx.options());
  at::Tensor cy = new_output({B, H}, cx.options());
  at::Tensor act = new_output({B, 4 * H}, cx.options().dtype(acc_type_of(cx.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cx.scalar_type(),
                                  "lstm_cell_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cell_forward_kernel<scalar_t, acc_t>(gates.data_ptr<scalar_t>(), cx.data_ptr<scalar_t>(),
                                         hy.data_ptr<scalar_t>(), cy.data_ptr<scalar_t>(),
                                         act.data_ptr<acc_t>(), B, H);
  });
  return {hy, cy, act};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward_cpu(const at::Tensor& grad_hy_in,
                                                          const at::Tensor& grad_cy_in,
                                                          const at::Tensor& act_in,
                                                          const at::Tensor& cx_in,
                                                          const at::Tensor& cy_in) {
  check_cell_backward_args(grad_hy_in, grad_cy_in, act_in, cx_in, cy_in);
  const at::Tensor grad_hy = grad_hy_in.contiguous(), grad_cy = grad_cy_in.contiguous();
  const at::Tensor act = act_in.contiguous(), cx = cx_in.contiguous(), cy = cy_in.contiguous();
  const int64_t B = cx.size(0), H = cx.size(1);
  at::Tensor grad_gates = new_output({B, 4 * H}, cx.options());
  at::Tensor grad_cx = new_output({B, H}, cx.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cx.scalar_type(),
                                  "lstm_cell_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cell_backward_kernel<scalar_t, acc_t>(
        grad_hy.data_ptr<scalar_t>(), grad_cy.data_ptr<scalar_t>(), act.data_ptr<acc_t>(),
        cx.data_ptr<scalar_t>(), cy.data_ptr<scalar_t>(), grad_gates.data_ptr<scalar_t>(),
        grad_cx.data_ptr<scalar_t>(), B, H);
  });
  return {grad_gates, grad_cx};
}

}  // namespace fusedrnn
