// fusedrnn._C: the schemas of every fusedrnn:: op (the one TORCH_LIBRARY block) and an
// empty Python module, so `import fusedrnn._C` loads the library and its registrations.
// Kernels register per device in cpu/register.cpp and cuda/register.cpp; fake (meta)
// kernels and autograd are registered in Python (fusedrnn/backends/compiled/).
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

// The CUDA code targets this build carries, as setup.py passed them (tokens such as
// sm_80/sm_90/compute_90: sm_XY a kernel image, compute_XY PTX), as a string; empty in a
// build without CUDA.  fusedrnn offers the cuda backend only on GPUs one of them can run on
// (fusedrnn/backends/cuda.py).
#define FUSEDRNN_STR_(...) #__VA_ARGS__
#define FUSEDRNN_STR(...) FUSEDRNN_STR_(__VA_ARGS__)
#ifdef FUSEDRNN_CUDA_TARGETS
#define FUSEDRNN_CUDA_TARGETS_STR FUSEDRNN_STR(FUSEDRNN_CUDA_TARGETS)
#else
#define FUSEDRNN_CUDA_TARGETS_STR ""
#endif
// The fingerprint of the CUDA sources and toolkit this build compiled (csrc/cuda/build_info.cu);
// empty in a build without CUDA.
#ifdef FUSEDRNN_WITH_CUDA
namespace fusedrnn::cuda {
const char* sources_fingerprint();
}
#define FUSEDRNN_CUDA_SOURCES_STR fusedrnn::cuda::sources_fingerprint()
#else
#define FUSEDRNN_CUDA_SOURCES_STR ""
#endif

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fusedrnn compiled ops (registered under torch.ops.fusedrnn)",
      -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m != nullptr && (PyModule_AddStringConstant(m, "CUDA_TARGETS", FUSEDRNN_CUDA_TARGETS_STR) < 0 ||
                       PyModule_AddStringConstant(m, "CUDA_SOURCES", FUSEDRNN_CUDA_SOURCES_STR) < 0)) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
}

// The parameter arguments of both layer ops (ops.h LayerArgs), in order.
#define FUSEDRNN_LAYER_PARAMS                                                                      \
  "Tensor w_hh, Tensor? w_hr, Tensor? mask, int mask_mode, Tensor? lengths, bool reverse, "        \
  "int norm_mode, Tensor? norm_h_weight, Tensor? norm_c_weight, Tensor? norm_c_bias, "                   \
  "Tensor? bn_h_running_mean, Tensor? bn_h_running_var, Tensor? bn_c_running_mean, "               \
  "Tensor? bn_c_running_var, int bn_step_offset, float norm_eps, Tensor? zoneout_c, Tensor? zoneout_h"

// The signatures of the layer op's forward and backward (after the op's name).
#define FUSEDRNN_LAYER_FORWARD_SIG                                                                 \
  "(Tensor xp, Tensor h0, Tensor c0, " FUSEDRNN_LAYER_PARAMS ", int save_workspace)"               \
  " -> (Tensor y, Tensor h_n, Tensor c_n, Tensor h_stats, Tensor c_stats, Tensor ws_h,"            \
  " Tensor ws_act, Tensor ws_c, Tensor ws_hh_hat, Tensor ws_hc)"
#define FUSEDRNN_LAYER_BACKWARD_SIG                                                                \
  "(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, " FUSEDRNN_LAYER_PARAMS ","                  \
  " Tensor h_stats, Tensor c_stats, Tensor ws_h, Tensor ws_act, Tensor ws_c, Tensor ws_hh_hat,"    \
  " Tensor ws_hc)"                                                                                 \
  " -> (Tensor grad_xp, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hh, Tensor grad_w_hr,"     \
  " Tensor grad_norm_h_weight, Tensor grad_norm_c_weight, Tensor grad_norm_c_bias)"

// The GRU layer op's parameter arguments (ops.h FUSEDRNN_GRU_ARGS_DECL), in order.
#define FUSEDRNN_GRU_PARAMS                                                                         \
  "Tensor w_hh, Tensor? b_hh, Tensor? mask, int mask_mode, Tensor? lengths, bool reverse, "          \
  "int norm_mode, Tensor? norm_h_weight, Tensor? bn_h_running_mean, Tensor? bn_h_running_var, "      \
  "int bn_step_offset, float norm_eps, Tensor? zoneout_h"

TORCH_LIBRARY(fusedrnn, m) {
  // Fused LSTM cell pointwise step.  Shapes: gates [B, 4H], cx [B, H].
  m.def("lstm_cell_forward(Tensor gates, Tensor cx) -> (Tensor hy, Tensor cy, Tensor act)",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor act, Tensor cx, Tensor cy)"
      " -> (Tensor grad_gates, Tensor grad_cx)",
      {at::Tag::pt2_compliant_tag});

  // The layer recurrence op: one LSTM layer, one direction, a whole sequence (see
  // fusedrnn/core/contract.py for the exact semantics and fusedrnn/core/schema.py for the
  // encodings and the workspace; the Triton ops fusedrnn_triton::lstm_layer_forward /
  // _backward have the same schema).  Shapes: xp [T, B, G], h0 [B, R], c0 [B, H], w_hh [G, R],
  // w_hr [P, H], mask [B, R] (mask_mode 1, shared) or [T, B, R] (mask_mode 2, per step),
  // lengths [B] (int64); norm_mode 0 none, 1 batch norm in training, 2 batch norm with the
  // running statistics, 3 layer norm: norm_h_weight [G], norm_c_weight / norm_c_bias [H] (N_h's
  // gain, N_c's gain and bias for either norm), running statistics [S, G] / [S, H] (batch norm
  // in eval only); zoneout_c [T, B, H] and zoneout_h [T, B, R] the zoneout weights of the
  // previous state (any strides; an expanded scalar is one rate for all).
  // Outputs: y [T, B, R], h_n [B, R], c_n [B, H]; statistics h_stats and c_stats (batch norm
  // in training: [T, 2, G] and [T, 2, H], mean and biased var per column; layer norm: [T, 2, B],
  // mean and rstd per row; else empty); and the workspace kept for backward (when
  // save_workspace): ws_h [T, B, R] (h_{s-1} * m_s, the operand of W_hh), ws_act [T, B, G]
  // (activated gates), ws_c [T + 1, B, H] (cell states, c0 first), ws_hh_hat [T, B, G] (N_h's
  // normalised W_hh h, norms only), ws_hc [T, B, H] (h before W_hr, projection only).
  // save_workspace: 0 nothing, 1 all of it, 2 all but ws_hh_hat, returned [0, B, G] and
  // recomputed by the backward (the recompute mode; CPU only).
  // Workspace tensors are indexed by the step s (processing order).
  m.def("lstm_layer_forward" FUSEDRNN_LAYER_FORWARD_SIG, {at::Tag::pt2_compliant_tag});
  // Backward of lstm_layer_forward: the gradients of its three outputs, its parameter
  // arguments unchanged, then its statistics and workspace.  Returns grad_xp [T, B, G],
  // grad_h0, grad_c0, grad_w_hh [G, R], grad_w_hr [P, H] (empty without projection), and the
  // gradients of norm_h_weight, norm_c_weight, norm_c_bias (empty without a norm).
  m.def("lstm_layer_backward" FUSEDRNN_LAYER_BACKWARD_SIG, {at::Tag::pt2_compliant_tag});
  // The GRU's layer op: one GRU layer, one direction, a whole sequence (torch's gates r, z, n;
  // fusedrnn/core/schema.py documents the encodings and the workspace).  Shapes: xp [T, B, 3H]
  // (N_x(x W_ih^T) + b_ih), h0 [B, H], w_hh [3H, H], b_hh [3H] (inside the reset product for
  // the n block; layer norm's LN_h bias folded in), mask, lengths, norm_mode, bn_* as the LSTM's
  // with norm_h_weight [3H] the gain of N_h, zoneout_h [T, B, H].  Outputs: y [T, B, H], h_n
  // [B, H], h_stats (batch norm in training [T, 2, 3H]; layer norm [T, 2, B]; else empty), and
  // the workspace ws_h [T, B, H] (h_{s-1} * m_s), ws_gates [T, B, 3H] (r, z, n), ws_hs
  // [T + 1, B, H] (the states, h0 first), ws_hh_hat [T, B, 3H] (N_h's x_hat, norms only),
  // ws_hn [T, B, H] (the n block of N_h(W_hh h) + b_hh); save_workspace as the LSTM's.
  m.def("gru_layer_forward(Tensor xp, Tensor h0, " FUSEDRNN_GRU_PARAMS ", int save_workspace)"
        " -> (Tensor y, Tensor h_n, Tensor h_stats, Tensor ws_h, Tensor ws_gates, Tensor ws_hs,"
        " Tensor ws_hh_hat, Tensor ws_hn)",
        {at::Tag::pt2_compliant_tag});
  // Backward of gru_layer_forward: grad_xp [T, B, 3H], grad_h0, grad_w_hh [3H, H], grad_b_hh
  // [3H] (empty without b_hh), grad_norm_h_weight [3H] (empty without a norm).
  m.def("gru_layer_backward(Tensor grad_y, Tensor grad_h_n, " FUSEDRNN_GRU_PARAMS ", Tensor h_stats,"
        " Tensor ws_h, Tensor ws_gates, Tensor ws_hs, Tensor ws_hh_hat, Tensor ws_hn)"
        " -> (Tensor grad_xp, Tensor grad_h0, Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_norm_h_weight)",
        {at::Tag::pt2_compliant_tag});
  // Per-step batch norm over a whole sequence (BN_x): v [T, B, F], weight [F], bias [F];
  // statistics of step s over the rows running at s (lengths [B]), rows reversed in their
  // own length when reverse.  Training: out, mean [T, F], biased var [T, F].  Eval: the
  // statistics of every step are given (eval_mean, eval_var [T, F]) and mean / var are empty.
  m.def(
      "batch_norm_steps_forward(Tensor v, Tensor weight, Tensor? bias, Tensor? lengths, bool reverse,"
      " Tensor? eval_mean, Tensor? eval_var, bool training, float eps)"
      " -> (Tensor out, Tensor mean, Tensor var)",
      {at::Tag::pt2_compliant_tag});
  // Backward: mean / var [T, F] are the statistics the forward used.  Returns grad_v,
  // grad_weight [F], grad_bias [F].
  m.def(
      "batch_norm_steps_backward(Tensor grad_out, Tensor v, Tensor weight, Tensor? lengths,"
      " bool reverse, Tensor mean, Tensor var, bool training, float eps)"
      " -> (Tensor grad_v, Tensor grad_weight, Tensor grad_bias)",
      {at::Tag::pt2_compliant_tag});

  // The input projection of a layer as the native backend runs it: x [..., I], weight [G, I],
  // bias [G] -> x @ weight^T + bias [..., G].  Backward returns grad_x (empty when grad_x is
  // False: x needs no gradient, one GEMM of three saved), grad_weight, and grad_bias [G]
  // (empty when bias is False).
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("linear_backward(Tensor grad_y, Tensor x, Tensor weight, bool bias, bool grad_x=True)"
        " -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
        {at::Tag::pt2_compliant_tag});

  // DropConnect's masked weight (CPU only): weight [any shape] with element i kept where the
  // 16-bit lane i of words [ceil(N / 4)] int64 is below its threshold (low for lanes 0-2 of a
  // word, top for lane 3), scaled by 1 / keep; zero elsewhere.  Its own backward on the gradient.
  m.def("drop_connect(Tensor weight, Tensor words, int low, int top, float keep) -> Tensor",
        {at::Tag::pt2_compliant_tag});

  // Which CUDA design the layer op picks for this shape on like's device, and why
  // (fusedrnn.explain reports it): persistent when its layout fits (ok; its blocks, units per
  // block and shared memory), else per-step.
  m.def(
      "cuda_persistent_layout(Tensor like, int B, int H, int R, bool proj, bool need_backward)"
      " -> (bool ok, str why, int units, int blocks, int smem_forward, int smem_backward)");
  // Internal, for a test without a GPU (CUDA builds only): the CUDA host's decision after a
  // persistent launch returned the cudaError_t err (ops.h cuda_launch_refused).
  m.def("_cuda_launch_refused(int err) -> bool");
}
