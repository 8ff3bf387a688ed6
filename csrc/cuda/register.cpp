// The CUDA kernels of every fusedrnn:: op: the one TORCH_LIBRARY_IMPL(fusedrnn, CUDA)
// block, adapting tensors to the plain launcher interface of launch.h.  Every launch
// runs on the current CUDA stream under a device guard.  Only c10/cuda headers here.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ops.h"
#include "launch.h"

namespace fusedrnn {
namespace {

cuda::DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::DType::kF32;
    case at::kDouble: return cuda::DType::kF64;
    case at::kHalf: return cuda::DType::kF16;
    case at::kBFloat16: return cuda::DType::kBF16;
    default: TORCH_CHECK(false, "fusedrnn: unsupported dtype ", t.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fusedrnn: CUDA launch of ", what, " failed: ",
              cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cuda(const at::Tensor& gates_in,
                                                                      const at::Tensor& cx_in) {
  check_cell_forward_args(gates_in, cx_in);
  TORCH_CHECK(gates_in.is_cuda(), "fusedrnn: gates must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(gates_in.device());
  const at::Tensor gates = gates_in.contiguous(), cx = cx_in.contiguous();
  const int64_t B = cx.size(0), H = cx.size(1);
  at::Tensor hy = new_output({B, H}, cx.options());
  at::Tensor cy = new_output({B, H}, cx.options());
  at::Tensor act = new_output({B, 4 * H}, cx.options().dtype(acc_type_of(cx.scalar_type())));
  check_launch(cuda::lstm_cell_forward(dtype_of(cx), gates.data_ptr(), cx.data_ptr(),
                                       hy.data_ptr(), cy.data_ptr(), act.data_ptr(), B, H,
                                       c10::cuda::getCurrentCUDAStream().stream()),
               "lstm_cell_forward");
  return {hy, cy, act};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward_cuda(const at::Tensor& grad_hy_in,
                                                           const at::Tensor& grad_cy_in,
                                                           const at::Tensor& act_in,
                                                           const at::Tensor& cx_in,
                                                           const at::Tensor& cy_in) {
  check_cell_backward_args(grad_hy_in, grad_cy_in, act_in, cx_in, cy_in);
  TORCH_CHECK(cx_in.is_cuda(), "fusedrnn: cx must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(cx_in.device());
  const at::Tensor grad_hy = grad_hy_in.contiguous(), grad_cy = grad_cy_in.contiguous();
  const at::Tensor act = act_in.contiguous(), cx = cx_in.contiguous(), cy = cy_in.contiguous();
  const int64_t B = cx.size(0), H = cx.size(1);
  at::Tensor grad_gates = new_output({B, 4 * H}, cx.options());
  at::Tensor grad_cx = new_output({B, H}, cx.options());
  check_launch(cuda::lstm_cell_backward(dtype_of(cx), grad_hy.data_ptr(), grad_cy.data_ptr(),
                                        act.data_ptr(), cx.data_ptr(), cy.data_ptr(),
                                        grad_gates.data_ptr(), grad_cx.data_ptr(), B, H,
                                        c10::cuda::getCurrentCUDAStream().stream()),
               "lstm_cell_backward");
  return {grad_gates, grad_cx};
}

}  // namespace
}  // namespace fusedrnn

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("lstm_cell_forward", &fusedrnn::lstm_cell_forward_cuda);
  m.impl("lstm_cell_backward", &fusedrnn::lstm_cell_backward_cuda);
}
