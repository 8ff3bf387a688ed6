// CPU kernels of per-step batch norm over a whole sequence (fusedrnn::batch_norm_steps_*),
// the BN_x of recurrent batch norm: statistics for all steps at once, outside the
// recurrence.
//
// Dimension letters: T steps, B batch, F features (G = 4H gate columns for BN_x).
// Step s of row b reads and writes time position pos(b, s) (reversed per row in the
// reverse direction); statistics of step s are over the rows still running at s.
// Finished rows (padding) come out as bias (x_hat = 0) and get zero gradient.
// Parallel over feature columns; each chunk loops over steps and rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>

#include "../gates.h"
#include "../ops.h"
#include "rows.h"

namespace fusedrnn {
namespace {

using cpu::Rows;

// out = gamma * (v - mean) * rstd + bias over one row of columns [0, n).
template <typename T>
FUSEDRNN_CPU_CLONES void bn_out_row(const T* __restrict v, const T* __restrict mean,
                                    const T* __restrict rstd, const T* __restrict gamma,
                                    const T* __restrict bias, T* __restrict out, int64_t n) {
  for (int64_t c = 0; c < n; ++c) out[c] = gamma[c] * gates::bn_normalize(v[c], mean[c], rstd[c]) + bias[c];
}

// First backward pass over one active row: sums of dxhat and dxhat * x_hat, dgamma and dbias.
template <typename T>
FUSEDRNN_CPU_CLONES void bn_sums_row(const T* __restrict v, const T* __restrict g,
                                     const T* __restrict mean, const T* __restrict rstd,
                                     const T* __restrict gamma, T* __restrict s1,
                                     T* __restrict s2, T* __restrict dgamma, T* __restrict dbias, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const T xhat = gates::bn_normalize(v[c], mean[c], rstd[c]);
    const T dxhat = g[c] * gamma[c];
    s1[c] += dxhat;
    s2[c] += dxhat * xhat;
    dgamma[c] += g[c] * xhat;
    dbias[c] += g[c];
  }
}

// Second backward pass: dL/dv of one active row (n_bn = 0: running statistics).
template <typename T>
FUSEDRNN_CPU_CLONES void bn_grad_row(const T* __restrict v, const T* __restrict g,
                                     const T* __restrict mean, const T* __restrict rstd,
                                     const T* __restrict gamma, const T* __restrict s1,
                                     const T* __restrict s2, T* __restrict gv, T n_bn, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const T xhat = gates::bn_normalize(v[c], mean[c], rstd[c]);
    gv[c] = gates::bn_backward(g[c] * gamma[c], xhat, rstd[c], s1[c], s2[c], n_bn);
  }
}

void check_bn_steps(const at::Tensor& v, const at::Tensor& weight, const OptT& bias,
                    const OptT& lengths, const OptT& mean, const OptT& var, bool training) {
  check_float(v, "v");
  check_dim(v, 3, "v");
  TORCH_CHECK(v.scalar_type() == at::kFloat || v.scalar_type() == at::kDouble,
              "fusedrnn: the native CPU batch norm takes float32 or float64, got ", v.scalar_type());
  const int64_t T = v.size(0), B = v.size(1), F = v.size(2);
  check_same(v, weight, "v", "weight");
  TORCH_CHECK(weight.numel() == F, "fusedrnn: weight must have ", F, " elements, got ", weight.numel());
  if (bias.has_value()) {
    check_same(v, *bias, "v", "bias");
    TORCH_CHECK(bias->numel() == F, "fusedrnn: bias must have ", F, " elements, got ", bias->numel());
  }
  if (lengths.has_value())
    TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->numel() == B,
                "fusedrnn: lengths must be an int64 tensor of ", B, " elements");
  if (!training) {
    TORCH_CHECK(mean.has_value() && var.has_value(),
                "fusedrnn: eval-mode batch norm needs the statistics of every step");
  }
  for (const OptT* t : {&mean, &var}) {
    if (t->has_value()) {
      check_same(v, **t, "v", "mean/var");
      TORCH_CHECK((*t)->dim() == 2 && (*t)->size(0) == T && (*t)->size(1) == F,
                  "fusedrnn: mean and var must have shape [", T, ", ", F, "], got ", (*t)->sizes());
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_steps_forward_cpu(
    const at::Tensor& v_in, const at::Tensor& weight_in, const OptT& bias_in, const OptT& lengths,
    bool reverse, const OptT& eval_mean, const OptT& eval_var, bool training, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_bn_steps(v_in, weight_in, bias_in, lengths, eval_mean, eval_var, training);
  const at::Tensor v = v_in.contiguous(), weight = weight_in.contiguous();
  const int64_t T_ = v.size(0), B = v.size(1), F = v.size(2);
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::zeros({F}, v.options());
  const std::vector<int64_t> len = lengths_vector(lengths, B, T_);
  const Rows rows{len, T_, B, reverse};
  at::Tensor out = new_output({T_, B, F}, v.options());
  at::Tensor mean = training ? new_output({T_, F}, v.options()) : eval_mean->contiguous();
  at::Tensor var = training ? new_output({T_, F}, v.options()) : eval_var->contiguous();
  at::Tensor rstd = at::empty({F}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "batch_norm_steps_forward_cpu", [&] {
    using T = scalar_t;
    const T *pv = v.data_ptr<T>(), *pg = weight.data_ptr<T>(), *pb = bias.data_ptr<T>();
    T *po = out.data_ptr<T>(), *pm = mean.data_ptr<T>(), *pvar = var.data_ptr<T>();
    T* pr = rstd.data_ptr<T>();
    at::parallel_for(0, F, 256, [&](int64_t c0, int64_t c1) {
      const int64_t w = c1 - c0;
      for (int64_t s = 0; s < T_; ++s) {
        T* m = pm + s * F;
        T* vr = pvar + s * F;
        if (training) {
          const int64_t n = rows.count(s);
          std::fill_n(m + c0, w, T(0));
          std::fill_n(vr + c0, w, T(0));
          for (int64_t b = 0; b < B; ++b)
            if (rows.active(b, s)) cpu::add_row(pv + (rows.pos(b, s) * B + b) * F + c0, m + c0, w);
          const T inv_n = n > 0 ? T(1) / T(n) : T(0);
          for (int64_t c = c0; c < c1; ++c) m[c] *= inv_n;
          for (int64_t b = 0; b < B; ++b)
            if (rows.active(b, s))
              cpu::add_sq_row(pv + (rows.pos(b, s) * B + b) * F + c0, m + c0, vr + c0, w);
          for (int64_t c = c0; c < c1; ++c) vr[c] *= inv_n;
        }
        for (int64_t c = c0; c < c1; ++c) pr[c] = gates::rsqrt_(vr[c] + T(eps));
        for (int64_t b = 0; b < B; ++b) {
          if (rows.active(b, s)) {
            const int64_t o = (rows.pos(b, s) * B + b) * F + c0;
            bn_out_row(pv + o, m + c0, pr + c0, pg + c0, pb + c0, po + o, w);
          } else {
            std::memcpy(po + (s * B + b) * F + c0, pb + c0, sizeof(T) * w);
          }
        }
      }
    });
  });
  if (!training) {  // statistics are outputs only in training
    mean = at::empty({0, F}, v.options());
    var = at::empty({0, F}, v.options());
  }
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_steps_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& v_in, const at::Tensor& weight_in,
    const OptT& lengths, bool reverse, const at::Tensor& mean_in, const at::Tensor& var_in,
    bool training, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_bn_steps(v_in, weight_in, OptT(), lengths, mean_in, var_in, true);
  TORCH_CHECK(grad_out_in.sizes() == v_in.sizes(), "fusedrnn: grad_out must have the shape of v");
  const at::Tensor g = grad_out_in.contiguous(), v = v_in.contiguous();
  const at::Tensor weight = weight_in.contiguous(), mean = mean_in.contiguous(), var = var_in.contiguous();
  const int64_t T_ = v.size(0), B = v.size(1), F = v.size(2);
  const std::vector<int64_t> len = lengths_vector(lengths, B, T_);
  const Rows rows{len, T_, B, reverse};
  at::Tensor grad_v = new_output({T_, B, F}, v.options());
  at::Tensor grad_w = at::zeros({F}, v.options());
  at::Tensor grad_b = at::zeros({F}, v.options());  // summed in the first pass (finished rows too: out = bias)
  at::Tensor scratch = at::empty({3 * F}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "batch_norm_steps_backward_cpu", [&] {
    using T = scalar_t;
    const T *pg = g.data_ptr<T>(), *pv = v.data_ptr<T>(), *pw = weight.data_ptr<T>();
    const T *pm = mean.data_ptr<T>(), *pvar = var.data_ptr<T>();
    T *pgv = grad_v.data_ptr<T>(), *pgw = grad_w.data_ptr<T>(), *pgb = grad_b.data_ptr<T>();
    T *rstd = scratch.data_ptr<T>(), *s1 = rstd + F, *s2 = rstd + 2 * F;
    at::parallel_for(0, F, 256, [&](int64_t c0, int64_t c1) {
      const int64_t w = c1 - c0;
      for (int64_t s = 0; s < T_; ++s) {
        const T* m = pm + s * F;
        for (int64_t c = c0; c < c1; ++c) {
          rstd[c] = gates::rsqrt_(pvar[s * F + c] + T(eps));
          s1[c] = s2[c] = T(0);
        }
        for (int64_t b = 0; b < B; ++b) {
          if (!rows.active(b, s)) {  // a finished row's output is the bias
            cpu::add_row(pg + (s * B + b) * F + c0, pgb + c0, w);
            continue;
          }
          const int64_t o = (rows.pos(b, s) * B + b) * F + c0;
          bn_sums_row(pv + o, pg + o, m + c0, rstd + c0, pw + c0, s1 + c0, s2 + c0, pgw + c0, pgb + c0, w);
        }
        const T n_bn = training ? T(rows.count(s)) : T(0);
        for (int64_t b = 0; b < B; ++b) {
          if (rows.active(b, s)) {
            const int64_t o = (rows.pos(b, s) * B + b) * F + c0;
            bn_grad_row(pv + o, pg + o, m + c0, rstd + c0, pw + c0, s1 + c0, s2 + c0, pgv + o, n_bn, w);
          } else {
            std::fill_n(pgv + (s * B + b) * F + c0, w, T(0));
          }
        }
      }
    });
  });
  return {grad_v, grad_w, grad_b};
}

}  // namespace fusedrnn
