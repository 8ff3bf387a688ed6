// CPU kernels of fusedrnn::linear / linear_backward: the input projection of a layer,
// y [M, G] = x [M, I] @ W^T + b, as the native backend runs it (one GEMM over all steps).
//
// Dimension letters: M rows (T x B), I input, G = 4H output columns.
//
// float32 runs on oneDNN (gemm.h): the forward on the weight reordered once per call (for
// K > 512, which oneDNN may not take, on the register tile of fused_step.h over the weight's
// panels), the gradients dX = dY W and dW = dY^T X as GEMMs on the views, with no transposed
// copy.  float64, or a torch without mkldnn, on at::mm.
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include "../common.h"
#include "../ops.h"
#include "fused_step.h"
#include "gemm.h"

namespace fusedrnn {

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const OptT& bias) {
  check_same(x, weight, "x", "weight");
  TORCH_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1), "fusedrnn::linear: x [..., I] and ",
              "weight [G, I] expected, got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(0)), "fusedrnn::linear: bias must be [G]");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = weight.size(0);
  const at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
  const OptT b = bias ? OptT(bias->contiguous()) : OptT();
  const int64_t macs = x2.size(0) * x2.size(1) * weight.size(0);
  if (x.scalar_type() == at::kFloat && cpu::onednn_one_off(macs, x2.size(1), /*reorder=*/true)) {
    const auto& dnnl = cpu::OneDnnLinear::get();
    return dnnl.run(x2, dnnl.pack(weight.contiguous(), x2.size(0)), b).view(out_shape);
  }
  if (x.scalar_type() == at::kFloat && cpu::tile_linear_pays(macs, x2.size(1))) {  // K > kOneDnnMaxK
    const int64_t M = x2.size(0), N = weight.size(0), K = x2.size(1);
    at::Tensor y = new_output({M, N}, x2.options());
    const at::Tensor panels = cpu::pack_panels(weight, /*trans=*/true, /*multiple=*/4);
    cpu::tile_linear(x2.data_ptr<float>(), panels.data_ptr<float>(), b ? b->data_ptr<float>() : nullptr,
                     y.data_ptr<float>(), M, N, K);
    return y.view(out_shape);
  }
  return (b ? at::addmm(*b, x2, weight.t()) : at::mm(x2, weight.t())).view(out_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                   const at::Tensor& weight, bool bias, bool need_x) {
  const int64_t I = weight.size(1), G = weight.size(0);
  const at::Tensor gy = grad_y.reshape({-1, G}).contiguous();
  const at::Tensor x2 = x.reshape({-1, I}).contiguous();
  at::Tensor grad_x = need_x ? cpu::matmul(gy, weight.contiguous()).view(x.sizes())  // dY @ W
                             : at::empty({0}, gy.options());
  at::Tensor grad_w = cpu::matmul(gy.t(), x2);                                 // dY^T @ X
  at::Tensor grad_b = bias ? gy.sum(0) : at::empty({0}, gy.options());
  return {grad_x, grad_w, grad_b};
}

}  // namespace fusedrnn
