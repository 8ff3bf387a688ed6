// Host side of the CUDA layer recurrence op (fusedrnn::lstm_layer_forward / _backward on CUDA
// tensors): adapts the tensors to launch.h's LayerParams / LayerGrads, allocates the outputs, the
// workspace and the per-step buffers, chooses the design and runs it on the current stream under
// a device guard.  The persistent design runs when its layout fits the shape (cached per device
// and shape) and the device accepts its cooperative launch; otherwise the per-step design: per
// step a cuBLAS GEMM (mm_acc_out) and the fused pointwise kernels.  Only c10/cuda and ATen op
// headers here.
//
// Dimension letters: T steps, B batch, H hidden, P projection, R = P or H (width of h),
// G = 4H gates (i, f, g, o), S running-statistics slots.
#include <ATen/Context.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/version.h>

#include <algorithm>
#include <compare>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "host.h"

namespace fusedrnn {
namespace {

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

// ---- the persistent layout of a shape, and launches the device refuses ----------------------

// What a layout depends on: the device, the dtype, the shape and whether the backward must fit too.
struct LayoutKey {
  int device, dtype;
  int64_t B, H, R;
  bool proj, need_backward;
  friend auto operator<=>(const LayoutKey&, const LayoutKey&) = default;
};

std::mutex layout_mu;
std::map<LayoutKey, cuda::PersistentLayout> layouts;  // one per shape: occupancy queries cost

LayoutKey layout_key(const LayerDims& d, at::ScalarType st, bool need_backward) {
  return {c10::cuda::current_device(), static_cast<int>(st), d.B, d.H, d.R, d.proj, need_backward};
}

// FUSEDRNN_DESIGN, the one design switch of both GPU backends: "step" forces the per-step
// design; "persistent" (or Triton's "persistent-resident" / "persistent-stream") requires the
// persistent one, and a call it cannot run raises; "auto" or unset: persistent where it fits.
std::string design_switch() {
  const char* v = std::getenv("FUSEDRNN_DESIGN");
  return v ? std::string(v) : std::string();
}

bool persistent_forced() { return design_switch().rfind("persistent", 0) == 0; }

// The persistent design runs when its layout fits: no projection, fp16 / bf16, or fp32
// when TF32 is allowed for matmuls (torch.backends.cuda.matmul.allow_tf32, which the
// per-step cuBLAS GEMMs follow too, so both designs have the same fp32 precision).
cuda::PersistentLayout choose_layout(const LayerDims& d, at::ScalarType st, const LayoutKey& key) {
  cuda::PersistentLayout layout{};
  if (design_switch() == "step") return layout.why = "FUSEDRNN_DESIGN=step", layout;
  if (d.ln) return layout.why = "layer norm (a row's statistics span every block: per-step design)", layout;
  if (st == at::kFloat && !at::globalContext().allowTF32CuBLAS())
    return layout.why = "float32 without TF32 (torch.backends.cuda.matmul.allow_tf32 is False)", layout;
  const std::lock_guard<std::mutex> lock(layout_mu);
  auto it = layouts.find(key);
  if (it == layouts.end())
    it = layouts.emplace(key, cuda::persistent_layout(dtype_of_scalar(st), d.B, d.H, d.R, d.proj, key.need_backward))
             .first;
  return it->second;
}

// Whether a persistent launch's error means that the device refused to start it, so that the
// per-step design can run instead: the grid cannot be co-resident now
// (cudaErrorCooperativeLaunchTooLarge: an MPS client limited to fewer SMs, or other work on the
// device), the registers or shared memory are not available (cudaErrorLaunchOutOfResources), the
// shared memory exceeds what the kernel may take (cudaErrorInvalidConfiguration, also
// prepare_smem's answer), or cooperative launches are not available in this setup
// (cudaErrorNotSupported).  Nothing else is a refusal: an invalid argument (cudaErrorInvalidValue,
// a bug), a fault of earlier work or a sticky error raises.
bool is_launch_refusal(int err) {
  switch (err) {
    case cudaErrorCooperativeLaunchTooLarge:
    case cudaErrorLaunchOutOfResources:
    case cudaErrorInvalidConfiguration:
    case cudaErrorNotSupported:
      return true;
    default:
      return false;
  }
}

// After a persistent launch of what for key returned err (err_text: its name and description):
// true when it ran; false when the device refused it (is_launch_refusal): key's layout becomes
// one that does not fit, so that this call and every later one of the shape run the per-step
// design, and a warning names the shape and the error, once per shape.  Raises any other error.
// Plain C++, no CUDA runtime call: the caller clears the error the launch left set.
bool persistent_ran(int err, const std::string& err_text, const LayoutKey& key, const char* what) {
  if (err == cudaSuccess) return true;
  TORCH_CHECK(is_launch_refusal(err), "fusedrnn: CUDA launch of ", what, " failed: ", err_text);
  bool first = false;
  {
    const std::lock_guard<std::mutex> lock(layout_mu);
    cuda::PersistentLayout& layout = layouts[key];
    first = layout.ok;
    layout.ok = false;
    layout.why = "the device refused its cooperative launch";
  }
  if (first)
    TORCH_WARN("fusedrnn: the device refused the cooperative launch of ", what, " (", err_text, ") for B=",
               key.B, " H=", key.H, " R=", key.R, " on cuda:", key.device,
               "; this shape runs the per-step design from now on");
  return false;
}

std::string error_text(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

// What the forward and the backward of the layer op both set up: contiguous parameters
// (named members: the kernels read their pointers after the call), lengths and per-step row
// counts on the device, and the launcher's parameters.
struct LayerSetup {
  LayerDims d;
  LayerTensors t;
  at::ScalarType dtype;  // of the data
  at::Tensor lengths_dev, counts;
  cuda::LayerParams p{};

  LayerSetup(const LayerDims& dims, const at::Tensor& like, const LayerArgs& a, bool save)
      : d(dims), t(dims, a), dtype(like.scalar_type()) {
    const std::vector<int64_t> len = lengths_vector(a.lengths, d.B, d.T);
    if (d.lengths) lengths_dev = a.lengths->to(like.device(), at::kLong).contiguous();
    counts = step_counts(len, d.T, d.B, like.options(), d.lengths);
    p.dtype = dtype_of_scalar(dtype);
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

// Runs the persistent design through launch(layout, exchange) when the shape's layout fits and
// the device accepts the launch (true); false when the per-step design must run instead.
template <class Launch>
bool run_persistent(const LayerSetup& L, bool need_backward, const char* what, const Launch& launch) {
  const LayoutKey key = layout_key(L.d, L.dtype, need_backward);
  const cuda::PersistentLayout layout = choose_layout(L.d, L.dtype, key);
  const bool forced = persistent_forced();
  TORCH_CHECK(layout.ok || !forced, "fusedrnn: FUSEDRNN_DESIGN=", design_switch(),
              " but the CUDA persistent design cannot run this shape: ", layout.why);
  if (!layout.ok) return false;
  at::Tensor xch = L.exchange();
  const cudaError_t err = launch(layout, xch.data_ptr());
  if (err == cudaSuccess) return true;
  cudaGetLastError();  // else the per-step design's first launch would report this error as its own
  const bool ran = persistent_ran(err, error_text(err), key, what);
  TORCH_CHECK(ran || !forced, "fusedrnn: FUSEDRNN_DESIGN=", design_switch(),
              " but the device refused the CUDA persistent launch of ", what, ": ", error_text(err));
  return ran;
}

}  // namespace

LayerForwardOut lstm_layer_forward_cuda(const at::Tensor& xp_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
                                          FUSEDRNN_LAYER_ARGS_DECL, int64_t save_workspace_in) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_float(xp_in, "xp");
  check_dim(xp_in, 3, "xp");
  TORCH_CHECK(xp_in.is_cuda(), "fusedrnn: xp must be a CUDA tensor");
  TORCH_CHECK(save_workspace_in == kSaveNone || save_workspace_in == kSaveAll,
              "fusedrnn: the CUDA layer kernel saves all of the workspace or none of it (save_workspace 0 or 1), "
              "got ", save_workspace_in, "; the recompute mode (2) runs on the CPU");
  const bool save_workspace = save_workspace_in == kSaveAll;
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
  bind(p.xp, xp, p.y, y, p.h_stats, h_stats, p.c_stats, c_stats, p.ws_hm, ws_hm, p.ws_act, ws_act, p.ws_c, ws_c,
       p.ws_hh_hat, ws_hh_hat, p.ws_hc, ws_hc, p.h_state, h_state);

  const auto persistent = [&](const cuda::PersistentLayout& layout, void* xch) {
    return cuda::layer_persistent_forward(p, layout, h0.data_ptr(), xch, current_stream());
  };
  if (T > 0 && B > 0) {
    if (!run_persistent(L, save_workspace, "the persistent forward kernel", persistent)) {
      at::Tensor hh = at::empty({B, G}, aopt);
      at::Tensor hp = at::empty({d.proj ? B : 0, R}, opt);
      check_launch(cuda::layer_step_init(p, h0.data_ptr(), current_stream()), "layer_step_init");
      const at::Tensor w_hh_t = L.t.w_hh.t();
      for (int64_t s = 0; s < T; ++s) {
        const int64_t ws = save_workspace ? s : 0;
        mm_acc_out(hh, ws_hm.select(0, ws), w_hh_t);
        if (d.ln)
          check_launch(cuda::layer_ln_forward(p, s, hh.data_ptr(), current_stream()), "layer_ln_forward");
        else
          check_launch(cuda::layer_step_forward(p, s, hh.data_ptr(), current_stream()), "layer_step_forward");
        if (d.proj) {
          at::mm_out(hp, ws_hc.select(0, ws), L.t.w_hr->t());
          check_launch(cuda::layer_step_forward_proj(p, s, hp.data_ptr(), current_stream()),
                       "layer_step_forward_proj");
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
  // the statistics and the workspace are only read (LayerParams names them for the forward's writes)
  bind(p.h_stats, hs, p.c_stats, cs, p.ws_hm, hm, p.ws_act, act, p.ws_c, c, p.ws_hh_hat, hh_hat, p.ws_hc, hc);
  cuda::LayerGrads g{};
  bind(g.grad_y, grad_y, g.grad_xp, grad_xp, g.dhh, dhh, g.dh_all, dh_all, g.dh_carry, dh_carry, g.dc_carry, dc_carry,
       g.dgamma_h, dgamma_h, g.dgamma_c, dgamma_c, g.dbeta_c, dbeta_c);

  const auto persistent = [&](const cuda::PersistentLayout& layout, void* xch) {
    return cuda::layer_persistent_backward(p, g, layout, xch, current_stream());
  };
  if (T > 0 && B > 0) {
    if (!run_persistent(L, true, "the persistent backward kernel", persistent)) {
      at::Tensor dhc = at::empty({d.proj ? B : 0, H}, aopt);
      at::Tensor dh_rec = at::empty({B, R}, aopt);
      for (int64_t s = T - 1; s >= 0; --s) {
        if (d.proj) {
          check_launch(cuda::layer_step_backward_pre(p, g, s, current_stream()), "layer_step_backward_pre");
          mm_acc_out(dhc, dh_all.select(0, s), *L.t.w_hr);
        }
        if (d.ln)
          check_launch(cuda::layer_ln_backward(p, g, s, d.proj ? dhc.data_ptr() : nullptr, current_stream()),
                       "layer_ln_backward");
        else
          check_launch(cuda::layer_step_backward(p, g, s, d.proj ? dhc.data_ptr() : nullptr, current_stream()),
                       "layer_step_backward");
        mm_acc_out(dh_rec, dhh.select(0, s), L.t.w_hh);
        check_launch(cuda::layer_step_backward_merge(p, g, s, dh_rec.data_ptr(), current_stream()),
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

std::tuple<bool, std::string, int64_t, int64_t, int64_t, int64_t> cuda_persistent_layout_cuda(
    const at::Tensor& like, int64_t B, int64_t H, int64_t R, bool proj, bool need_backward) {
  const c10::cuda::CUDAGuard guard(like.device());
  LayerDims d{};
  d.B = B;
  d.H = H;
  d.R = R;
  d.proj = proj;
  const at::ScalarType st = like.scalar_type();
  const cuda::PersistentLayout layout = choose_layout(d, st, layout_key(d, st, need_backward));
  return {layout.ok, layout.why ? std::string(layout.why) : std::string(), layout.units, layout.blocks,
          static_cast<int64_t>(layout.smem_forward), static_cast<int64_t>(layout.smem_backward)};
}

bool cuda_launch_refused(int64_t err) {
  const LayoutKey key{-1, static_cast<int>(at::kFloat), 1, 4, 4, false, true};  // a shape on no device
  {
    const std::lock_guard<std::mutex> lock(layout_mu);
    cuda::PersistentLayout fits{};
    fits.ok = true;
    fits.why = "";
    layouts[key] = fits;
  }
  const cudaError_t e = static_cast<cudaError_t>(err);
  if (persistent_ran(e, error_text(e), key, "a stubbed persistent kernel")) return false;
  const std::lock_guard<std::mutex> lock(layout_mu);
  return !layouts.at(key).ok;
}

}  // namespace fusedrnn
