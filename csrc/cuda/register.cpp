// The CUDA kernels of every fusedrnn:: op: the one TORCH_LIBRARY_IMPL(fusedrnn, CUDA)
// block, adapting tensors to the plain launcher interface of launch.h.  Every launch
// runs on the current CUDA stream under a device guard.  Only c10/cuda headers here.
#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "../ops.h"
#include "launch.h"

namespace fusedrnn {
namespace {

cuda::DType dtype_of_scalar(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return cuda::DType::kF32;
    case at::kDouble: return cuda::DType::kF64;
    case at::kHalf: return cuda::DType::kF16;
    case at::kBFloat16: return cuda::DType::kBF16;
    default: TORCH_CHECK(false, "fusedrnn: unsupported dtype ", st);
  }
}

cuda::DType dtype_of(const at::Tensor& t) { return dtype_of_scalar(t.scalar_type()); }

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fusedrnn: CUDA launch of ", what, " failed: ",
              cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cuda(const at::Tensor& gates,
                                                                      const at::Tensor& cx) {
  TORCH_CHECK(gates.is_cuda(), "fusedrnn: gates must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(gates.device());
  CellForward c(gates, cx);
  check_launch(cuda::lstm_cell_forward(dtype_of(c.cx), c.gates.data_ptr(), c.cx.data_ptr(), c.hy.data_ptr(),
                                       c.cy.data_ptr(), c.act.data_ptr(), c.B, c.H,
                                       c10::cuda::getCurrentCUDAStream().stream()),
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
                                        c.grad_cx.data_ptr(), c.B, c.H, c10::cuda::getCurrentCUDAStream().stream()),
               "lstm_cell_backward");
  return {c.grad_gates, c.grad_cx};
}

// ---- the layer recurrence ----------------------------------------------------------------

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

const void* ptr_or_null(const OptT& t) { return t.has_value() ? t->data_ptr() : nullptr; }

// out [M, N] (accumulation dtype) = a @ b, with a and b in the data dtype: cuBLAS writes the
// fp32 result directly where torch offers mm.dtype_out (2.8 and later).
void mm_acc_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (out.scalar_type() == a.scalar_type()) {
    at::mm_out(out, a, b);
    return;
  }
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
  at::mm_out(out, a, b, out.scalar_type());
#else
  out.copy_(at::mm(a, b));
#endif
}

// Rows running at each step, on the device: [T] int32.
at::Tensor step_counts(const std::vector<int64_t>& len, int64_t T, int64_t B, const at::TensorOptions& opt,
                       bool has_lengths) {
  if (!has_lengths) return at::full({std::max<int64_t>(T, 1)}, B, opt.dtype(at::kInt));
  std::vector<int> counts(std::max<int64_t>(T, 1), 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b) counts[t] += t < len[b];
  at::Tensor host = at::empty({static_cast<int64_t>(counts.size())}, at::TensorOptions().dtype(at::kInt));
  std::memcpy(host.data_ptr<int>(), counts.data(), sizeof(int) * counts.size());
  return host.to(opt.device(), /*non_blocking=*/false);
}

// The persistent design runs when the plan fits: no projection, fp16 / bf16, or fp32
// when TF32 is allowed for matmuls (torch.backends.cuda.matmul.allow_tf32, which the
// per-step cuBLAS GEMMs follow too, so both designs have the same fp32 precision).
// FUSEDRNN_CUDA_DESIGN=step forces the per-step design (tests use it to cover both).
cuda::PersistentPlan choose_plan(const LayerDims& d, at::ScalarType st, bool need_backward) {
  cuda::PersistentPlan plan{};
  const char* force = std::getenv("FUSEDRNN_CUDA_DESIGN");
  if (force && std::string(force) == "step") return plan.why = "FUSEDRNN_CUDA_DESIGN=step", plan;
  if (d.ln) return plan.why = "layer norm (a row's statistics span every block: per-step design)", plan;
  if (st == at::kFloat && !at::globalContext().allowTF32CuBLAS())
    return plan.why = "float32 without TF32 (torch.backends.cuda.matmul.allow_tf32 is False)", plan;
  // The plan depends on the device and the shape only: cache it (occupancy queries cost).
  int dev = 0;
  cudaGetDevice(&dev);
  using Key = std::tuple<int, int, int64_t, int64_t, int64_t, bool, bool>;
  static std::mutex mu;
  static std::map<Key, cuda::PersistentPlan> cache;
  const Key key{dev, static_cast<int>(st), d.B, d.H, d.R, d.proj, need_backward};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end())
    it = cache.emplace(key, cuda::persistent_plan(dtype_of_scalar(st), d.B, d.H, d.R, d.proj, need_backward)).first;
  return it->second;
}

// What the forward and the backward of the layer op both set up: contiguous parameters
// (named members: the kernels read their pointers after the call), lengths and per-step row
// counts on the device, and the launcher's parameters.
struct LayerSetup {
  LayerDims d;
  LayerTensors t;
  at::Tensor lengths_dev, counts;
  cuda::LayerParams p{};

  LayerSetup(const LayerDims& dims, const at::Tensor& like, const LayerArgs& a, bool save) : d(dims), t(dims, a) {
    const std::vector<int64_t> len = lengths_vector(a.lengths, d.B, d.T);
    if (d.lengths) lengths_dev = a.lengths->to(like.device(), at::kLong).contiguous();
    counts = step_counts(len, d.T, d.B, like.options(), d.lengths);
    p.dtype = dtype_of_scalar(like.scalar_type());
    p.T = d.T;
    p.B = d.B;
    p.H = d.H;
    p.R = d.R;
    p.S = d.S;
    p.proj = d.proj;
    p.reverse = d.reverse;
    p.bn = d.bn;
    p.bn_train = d.bn_train;
    p.ln = d.ln;
    p.mask_per_step = d.mask_per_step;
    p.save = save;
    p.lengths = d.lengths ? lengths_dev.data_ptr<int64_t>() : nullptr;
    p.counts = counts.data_ptr<int>();
    p.mask = ptr_or_null(t.mask);
    p.w_hh = t.w_hh.data_ptr();
    p.gamma_h = ptr_or_null(t.norm_h_weight);
    p.gamma_c = ptr_or_null(t.norm_c_weight);
    p.beta_c = ptr_or_null(t.norm_c_bias);
    p.run_mean_h = ptr_or_null(t.rm_h);
    p.run_var_h = ptr_or_null(t.rv_h);
    p.run_mean_c = ptr_or_null(t.rm_c);
    p.run_var_c = ptr_or_null(t.rv_c);
    p.step_offset = a.bn_step_offset;
    p.eps = a.norm_eps;
    if (d.zoneout) {  // contiguous [T, B, *] weights, or the eval rates as expanded scalars
      p.zone_scalar = is_broadcast_scalar(*t.zoneout_c) && is_broadcast_scalar(*t.zoneout_h);
      if (!p.zone_scalar) {  // a rate beside a tensor: both as tensors
        t.zoneout_c = t.zoneout_c->contiguous();
        t.zoneout_h = t.zoneout_h->contiguous();
      }
      p.zone_c = t.zoneout_c->data_ptr();
      p.zone_h = t.zoneout_h->data_ptr();
    }
  }

  // The exchange buffer of a persistent launch (zeroed: it holds the barrier counters).
  at::Tensor exchange() const {
    return at::zeros({static_cast<int64_t>(cuda::persistent_exchange_bytes(p.dtype, d.B, d.H, d.R))},
                     t.w_hh.options().dtype(at::kByte));
  }
};

LayerForwardOut lstm_layer_forward_cuda(const at::Tensor& xp_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
                                          FUSEDRNN_LAYER_ARGS_DECL, bool save_workspace) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_float(xp_in, "xp");
  check_dim(xp_in, 3, "xp");
  TORCH_CHECK(xp_in.is_cuda(), "fusedrnn: xp must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(xp_in.device());
  const LayerArgs a = FUSEDRNN_LAYER_ARGS;
  const LayerSetup L(check_layer_args(xp_in.size(0), xp_in.size(1), xp_in.size(2), xp_in, h0_in, c0_in, a), xp_in, a,
                     save_workspace);
  const LayerDims& d = L.d;
  const int64_t T = d.T, B = d.B, H = d.H, G = d.G, R = d.R;
  const at::Tensor xp = xp_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const at::TensorOptions opt = xp.options();
  const at::TensorOptions aopt = opt.dtype(acc_type_of(xp.scalar_type()));
  const int64_t TW = save_workspace ? T : 1;

  at::Tensor y = new_output({T, B, R}, opt);
  // per-step batch statistics [T, 2, G] / [T, 2, H]; layer norm's per-row ones [T, 2, B]
  at::Tensor h_stats = new_output({(d.bn_train || d.ln) ? T : 0, 2, d.ln ? B : G}, aopt);
  at::Tensor c_stats = new_output({(d.bn_train || d.ln) ? T : 0, 2, d.ln ? B : H}, aopt);
  at::Tensor ws_hm = new_output({TW, B, R}, opt);
  at::Tensor ws_act = new_output({TW, B, G}, aopt);
  at::Tensor ws_c = new_output({save_workspace ? T + 1 : 2, B, H}, aopt);
  at::Tensor ws_hh_hat = new_output({(d.bn || d.ln) ? TW : 0, B, G}, aopt);
  at::Tensor ws_hc = new_output({d.proj ? TW : 0, B, H}, opt);
  at::Tensor h_state = at::empty({B, R}, aopt);
  ws_c.select(0, 0).copy_(c0);

  cuda::LayerParams p = L.p;
  p.xp = xp.data_ptr();
  p.y = y.data_ptr();
  p.h_stats = h_stats.data_ptr();
  p.c_stats = c_stats.data_ptr();
  p.ws_hm = ws_hm.data_ptr();
  p.ws_act = ws_act.data_ptr();
  p.ws_c = ws_c.data_ptr();
  p.ws_hh_hat = ws_hh_hat.data_ptr();
  p.ws_hc = ws_hc.data_ptr();
  p.h_state = h_state.data_ptr();

  if (T > 0 && B > 0) {
    const cuda::PersistentPlan plan = choose_plan(d, xp.scalar_type(), save_workspace);
    if (plan.ok) {
      at::Tensor xch = L.exchange();
      check_launch(cuda::layer_persistent_forward(p, plan, h0.data_ptr(), xch.data_ptr(), stream()),
                   "the persistent forward kernel");
    } else {
      at::Tensor hh = at::empty({B, G}, aopt);
      at::Tensor hp = at::empty({d.proj ? B : 0, R}, opt);
      check_launch(cuda::layer_step_init(p, h0.data_ptr(), stream()), "layer_step_init");
      const at::Tensor w_hh_t = L.t.w_hh.t();
      for (int64_t s = 0; s < T; ++s) {
        const int64_t ws = save_workspace ? s : 0;
        mm_acc_out(hh, ws_hm.select(0, ws), w_hh_t);
        if (d.ln)
          check_launch(cuda::layer_ln_forward(p, s, hh.data_ptr(), stream()), "layer_ln_forward");
        else
          check_launch(cuda::layer_step_forward(p, s, hh.data_ptr(), stream()), "layer_step_forward");
        if (d.proj) {
          at::mm_out(hp, ws_hc.select(0, ws), L.t.w_hr->t());
          check_launch(cuda::layer_step_forward_proj(p, s, hp.data_ptr(), stream()), "layer_step_forward_proj");
        }
      }
    }
  } else {
    h_state.copy_(h0);
  }
  at::Tensor h_n = new_output({B, R}, opt);
  h_n.copy_(h_state);
  at::Tensor c_n = new_output({B, H}, opt);  // a fresh tensor, never a view of the workspace
  c_n.copy_(ws_c.select(0, save_workspace ? T : (T & 1)));
  return {y, h_n, c_n, h_stats, c_stats, ws_hm, ws_act, ws_c, ws_hh_hat, ws_hc};
}

LayerBackwardOut lstm_layer_backward_cuda(const at::Tensor& grad_y_in, const at::Tensor& grad_h_n,
                                            const at::Tensor& grad_c_n, FUSEDRNN_LAYER_ARGS_DECL,
                                            FUSEDRNN_LAYER_BACKWARD_TAIL_DECL) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(grad_y_in.dim() == 3 && grad_y_in.is_cuda(), "fusedrnn: grad_y must be a CUDA [T, B, R] tensor");
  const c10::cuda::CUDAGuard guard(grad_y_in.device());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % 4 == 0, "fusedrnn: w_hh must be [4H, R]");
  const LayerArgs a = FUSEDRNN_LAYER_ARGS;
  const LayerSetup L(check_layer_args(grad_y_in.size(0), grad_y_in.size(1), w_hh.size(0), grad_y_in, grad_h_n,
                                      grad_c_n, a),
                     grad_y_in, a, true);
  const LayerDims& d = L.d;
  const int64_t T = d.T, B = d.B, G = d.G, H = d.H, R = d.R, P = d.P;
  TORCH_CHECK(grad_y_in.size(2) == R, "fusedrnn: grad_y must have ", R, " features");
  TORCH_CHECK(ws_act.dim() == 3 && ws_act.size(0) == T && ws_c.size(0) == T + 1 && ws_h.size(0) == T,
              "fusedrnn: lstm_layer_backward needs the full workspace (save_workspace=True)");
  const at::TensorOptions opt = grad_y_in.options();
  const at::TensorOptions aopt = opt.dtype(acc_type_of(grad_y_in.scalar_type()));
  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor act = ws_act.contiguous(), c = ws_c.contiguous(), hm = ws_h.contiguous();
  const at::Tensor hh_hat = ws_hh_hat.contiguous(), hc = ws_hc.contiguous();
  const at::Tensor hs = h_stats.contiguous(), cs = c_stats.contiguous();

  at::Tensor grad_xp = new_output({T, B, G}, opt);
  at::Tensor dhh = at::empty({T, B, G}, opt);
  at::Tensor dh_all = at::empty({d.proj ? T : 0, B, R}, opt);
  at::Tensor dh_carry = grad_h_n.to(aopt).contiguous().clone();
  at::Tensor dc_carry = grad_c_n.to(aopt).contiguous().clone();
  // batch norm accumulates its parameter gradients per column; layer norm per row and column
  // (each row's block adds to its own row), summed over the rows below
  const int64_t NR = d.ln ? B : 1;
  at::Tensor dgamma_h = at::zeros({(d.bn || d.ln) ? NR * G : 0}, aopt);
  at::Tensor dgamma_c = at::zeros({(d.bn || d.ln) ? NR * H : 0}, aopt);
  at::Tensor dbeta_c = at::zeros({(d.bn || d.ln) ? NR * H : 0}, aopt);

  cuda::LayerParams p = L.p;
  p.h_stats = const_cast<void*>(hs.data_ptr());
  p.c_stats = const_cast<void*>(cs.data_ptr());
  p.ws_hm = const_cast<void*>(hm.data_ptr());
  p.ws_act = const_cast<void*>(act.data_ptr());
  p.ws_c = const_cast<void*>(c.data_ptr());
  p.ws_hh_hat = const_cast<void*>(hh_hat.data_ptr());
  p.ws_hc = const_cast<void*>(hc.data_ptr());
  cuda::LayerGrads g{};
  g.grad_y = grad_y.data_ptr();
  g.grad_xp = grad_xp.data_ptr();
  g.dhh = dhh.data_ptr();
  g.dh_all = dh_all.data_ptr();
  g.dh_carry = dh_carry.data_ptr();
  g.dc_carry = dc_carry.data_ptr();
  g.dgamma_h = dgamma_h.data_ptr();
  g.dgamma_c = dgamma_c.data_ptr();
  g.dbeta_c = dbeta_c.data_ptr();

  if (T > 0 && B > 0) {
    const cuda::PersistentPlan plan = choose_plan(d, grad_y.scalar_type(), true);
    if (plan.ok) {
      at::Tensor xch = L.exchange();
      check_launch(cuda::layer_persistent_backward(p, g, plan, xch.data_ptr(), stream()),
                   "the persistent backward kernel");
    } else {
      at::Tensor dhc = at::empty({d.proj ? B : 0, H}, aopt);
      at::Tensor dh_rec = at::empty({B, R}, aopt);
      for (int64_t s = T - 1; s >= 0; --s) {
        if (d.proj) {
          check_launch(cuda::layer_step_backward_pre(p, g, s, stream()), "layer_step_backward_pre");
          mm_acc_out(dhc, dh_all.select(0, s), *L.t.w_hr);
        }
        if (d.ln)
          check_launch(cuda::layer_ln_backward(p, g, s, d.proj ? dhc.data_ptr() : nullptr, stream()),
                       "layer_ln_backward");
        else
          check_launch(cuda::layer_step_backward(p, g, s, d.proj ? dhc.data_ptr() : nullptr, stream()),
                       "layer_step_backward");
        mm_acc_out(dh_rec, dhh.select(0, s), L.t.w_hh);
        check_launch(cuda::layer_step_backward_merge(p, g, s, dh_rec.data_ptr(), stream()),
                     "layer_step_backward_merge");
      }
    }
  }
  // the weight gradients reduce over T * B rows: 16-bit operands, fp32 output (mm_acc_out: no
  // reduction in 16 bits, whatever torch's reduced-precision-reduction setting), then rounded once
  const at::ScalarType st = grad_y.scalar_type();
  at::Tensor grad_w_hh = at::empty({G, R}, aopt);
  mm_acc_out(grad_w_hh, dhh.view({T * B, G}).t(), hm.view({T * B, R}));
  grad_w_hh = grad_w_hh.to(st);
  at::Tensor grad_w_hr = at::empty({0}, opt);
  if (d.proj) {
    grad_w_hr = at::empty({P, H}, aopt);
    mm_acc_out(grad_w_hr, dh_all.view({T * B, P}).t(), hc.view({T * B, H}));
    grad_w_hr = grad_w_hr.to(st);
  }
  if (d.ln) {
    dgamma_h = dgamma_h.view({B, G}).sum(0);
    dgamma_c = dgamma_c.view({B, H}).sum(0);
    dbeta_c = dbeta_c.view({B, H}).sum(0);
  }
  return {grad_xp, dh_carry.to(st), dc_carry.to(st), grad_w_hh, grad_w_hr, dgamma_h.to(st), dgamma_c.to(st),
          dbeta_c.to(st)};
}

// ---- per-step batch norm (BN_x) ------------------------------------------------------------

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
                                              out.data_ptr(), stream()),
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
                                               grad_v.data_ptr(), gw_part.data_ptr(), stream()),
               "batch_norm_steps_backward");
  const at::ScalarType st = v.scalar_type();
  return {grad_v, gw_part.sum(0).to(st), g.sum(at::IntArrayRef{0, 1}, false, aopt.dtype().toScalarType()).to(st)};
}

std::tuple<bool, std::string, int64_t, int64_t, int64_t, int64_t> cuda_layer_plan_cuda(
    const at::Tensor& like, int64_t B, int64_t H, int64_t R, bool proj, bool need_backward) {
  const c10::cuda::CUDAGuard guard(like.device());
  LayerDims d{};
  d.B = B;
  d.H = H;
  d.R = R;
  d.proj = proj;
  const cuda::PersistentPlan plan = choose_plan(d, like.scalar_type(), need_backward);
  return {plan.ok, plan.why ? std::string(plan.why) : std::string(), plan.units, plan.blocks,
          static_cast<int64_t>(plan.smem_forward), static_cast<int64_t>(plan.smem_backward)};
}

}  // namespace
}  // namespace fusedrnn

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("cuda_layer_plan", &fusedrnn::cuda_layer_plan_cuda);
  m.impl("lstm_cell_forward", &fusedrnn::lstm_cell_forward_cuda);
  m.impl("lstm_cell_backward", &fusedrnn::lstm_cell_backward_cuda);
  m.impl("lstm_layer_forward", &fusedrnn::lstm_layer_forward_cuda);
  m.impl("lstm_layer_backward", &fusedrnn::lstm_layer_backward_cuda);
  m.impl("batch_norm_steps_forward", &fusedrnn::batch_norm_steps_forward_cuda);
  m.impl("batch_norm_steps_backward", &fusedrnn::batch_norm_steps_backward_cuda);
}
