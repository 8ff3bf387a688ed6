// Host side of the CUDA cell op (fusedrnn::lstm_cell_forward / _backward on CUDA tensors): the
// checked contiguous tensors of ops.h's CellForward / CellBackward, launched on the current
// stream under a device guard.
//
// Dimension letters: B batch, H hidden, G = 4H gates.
#include <c10/cuda/CUDAGuard.h>

#include <tuple>

#include "host.h"

namespace fusedrnn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cuda(const at::Tensor& gates,
                                                                      const at::Tensor& cx) {
  TORCH_CHECK(gates.is_cuda(), "fusedrnn: gates must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(gates.device());
  CellForward c(gates, cx);
  check_launch(cuda::lstm_cell_forward(dtype_of(c.cx), c.gates.data_ptr(), c.cx.data_ptr(), c.hy.data_ptr(),
                                       c.cy.data_ptr(), c.act.data_ptr(), c.B, c.H, current_stream()),
               "lstm_cell_forward");
  return {c.hy, c.cy, c.act};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward_cuda(const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                                                           const at::Tensor& act, const at::Tensor& cx,
                                                           const at::Tensor& cy) {
  TORCH_CHECK(cx.is_cuda(), "fusedrnn: cx must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(cx.device());
  CellBackward c(grad_hy, grad_cy, act, cx, cy);
  check_launch(cuda::lstm_cell_backward(dtype_of(c.cx), c.grad_hy.data_ptr(), c.grad_cy.data_ptr(),
                                        c.act.data_ptr(), c.cx.data_ptr(), c.cy.data_ptr(), c.grad_gates.data_ptr(),
                                        c.grad_cx.data_ptr(), c.B, c.H, current_stream()),
               "lstm_cell_backward");
  return {c.grad_gates, c.grad_cx};
}

}  // namespace fusedrnn
