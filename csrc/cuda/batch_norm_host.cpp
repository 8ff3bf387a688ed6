// Host side of the CUDA per-step batch norm over a sequence (fusedrnn::batch_norm_steps_forward /
// _backward on CUDA tensors, BN_x): argument checks, contiguous inputs, fresh outputs, one launch
// on the current stream under a device guard.
//
// Dimension letters: T steps, B batch, F features.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>

#include "host.h"

namespace fusedrnn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_steps_forward_cuda(
    const at::Tensor& v_in, const at::Tensor& weight, const OptT& bias, const OptT& lengths, bool reverse,
    const OptT& eval_mean, const OptT& eval_var, bool training, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_float(v_in, "v");
  check_dim(v_in, 3, "v");
  TORCH_CHECK(v_in.is_cuda(), "fusedrnn: v must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(v_in.device());
  const int64_t T = v_in.size(0), B = v_in.size(1), F = v_in.size(2);
  check_same(v_in, weight, "v", "weight");
  TORCH_CHECK(weight.numel() == F, "fusedrnn: weight must have ", F, " elements");
  if (bias.has_value()) {
    check_same(v_in, *bias, "v", "bias");
    TORCH_CHECK(bias->numel() == F, "fusedrnn: bias must have ", F, " elements");
  }
  TORCH_CHECK(training || (eval_mean.has_value() && eval_var.has_value()),
              "fusedrnn: eval-mode batch norm needs the statistics of every step");
  if (!training)
    TORCH_CHECK(eval_mean->dim() == 2 && eval_mean->size(0) == T && eval_mean->size(1) == F &&
                    eval_var->sizes() == eval_mean->sizes(),
                "fusedrnn: eval_mean and eval_var must have shape [", T, ", ", F, "]");
  lengths_vector(lengths, B, T);  // validates
  const at::Tensor v = v_in.contiguous();
  const at::TensorOptions aopt = v.options().dtype(acc_type_of(v.scalar_type()));
  const at::Tensor lengths_dev = lengths.has_value() ? lengths->to(v.device(), at::kLong).contiguous() : at::Tensor();
  at::Tensor out = new_output({T, B, F}, v.options());
  at::Tensor mean = training ? new_output({T, F}, aopt) : eval_mean->to(aopt).contiguous();
  at::Tensor var = training ? new_output({T, F}, aopt) : eval_var->to(aopt).contiguous();
  const OptT b = contiguous_opt(bias);
  const at::Tensor w = weight.contiguous();
  check_launch(cuda::batch_norm_steps_forward(dtype_of(v), v.data_ptr(), w.data_ptr(), ptr_or_null(b),
                                              lengths.has_value() ? lengths_dev.data_ptr<int64_t>() : nullptr,
                                              reverse, T, B, F, training, eps, mean.data_ptr(), var.data_ptr(),
                                              out.data_ptr(), current_stream()),
               "batch_norm_steps_forward");
  if (!training) return {out, at::empty({0, F}, aopt), at::empty({0, F}, aopt)};
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_steps_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& v_in, const at::Tensor& weight, const OptT& lengths, bool reverse,
    const at::Tensor& mean, const at::Tensor& var, bool training, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(v_in.is_cuda() && v_in.dim() == 3 && grad_out.sizes() == v_in.sizes(),
              "fusedrnn: v and grad_out must be CUDA tensors of the same [T, B, F] shape");
  const c10::cuda::CUDAGuard guard(v_in.device());
  const int64_t T = v_in.size(0), B = v_in.size(1), F = v_in.size(2);
  lengths_vector(lengths, B, T);
  const at::Tensor v = v_in.contiguous(), g = grad_out.contiguous(), w = weight.contiguous();
  const at::TensorOptions aopt = v.options().dtype(acc_type_of(v.scalar_type()));
  const at::Tensor m = mean.to(aopt).contiguous(), vr = var.to(aopt).contiguous();
  const at::Tensor lengths_dev = lengths.has_value() ? lengths->to(v.device(), at::kLong).contiguous() : at::Tensor();
  at::Tensor grad_v = new_output({T, B, F}, v.options());
  at::Tensor gw_part = at::empty({T, F}, aopt);
  check_launch(cuda::batch_norm_steps_backward(dtype_of(v), g.data_ptr(), v.data_ptr(), w.data_ptr(),
                                               lengths.has_value() ? lengths_dev.data_ptr<int64_t>() : nullptr,
                                               reverse, T, B, F, training, eps, m.data_ptr(), vr.data_ptr(),
                                               grad_v.data_ptr(), gw_part.data_ptr(), current_stream()),
               "batch_norm_steps_backward");
  const at::ScalarType st = v.scalar_type();
  return {grad_v, gw_part.sum(0).to(st), g.sum(at::IntArrayRef{0, 1}, false, aopt.dtype().toScalarType()).to(st)};
}

}  // namespace fusedrnn
