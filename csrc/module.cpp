// fusedrnn._C: the schemas of every fusedrnn:: op (the one TORCH_LIBRARY block) and an
// empty Python module, so `import fusedrnn._C` loads the library and its registrations.
// Kernels register per device in cpu/register.cpp and cuda/register.cpp; fake (meta)
// kernels and autograd are registered in Python (fusedrnn/ops/).
#include <Python.h>
#include <torch/library.h>

#include <atomic>

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

namespace fusedrnn {
namespace {
std::atomic<bool> step_graphs_on{false};
}  // namespace

bool step_graphs_enabled() { return step_graphs_on.load(std::memory_order_relaxed); }
}  // namespace fusedrnn

namespace {
// _C.set_step_graphs(on) -> the previous setting: whether the CUDA layer op sends its
// per-step design's calls through the step-graph cache (fusedrnn/backends/step_graphs.py
// sets it; the cache lives in Python, behind the op fusedrnn::_cuda_layer_*_graphed).
PyObject* set_step_graphs(PyObject*, PyObject* on) {
  const int v = PyObject_IsTrue(on);
  if (v < 0) return nullptr;
  return PyBool_FromLong(fusedrnn::step_graphs_on.exchange(v != 0));
}

PyMethodDef methods[] = {
    {"set_step_graphs", set_step_graphs, METH_O, "set_step_graphs(on: bool) -> bool (the previous setting)"},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fusedrnn compiled ops (registered under torch.ops.fusedrnn)",
      -1, methods};
  PyObject* m = PyModule_Create(&module_def);
  if (m != nullptr && PyModule_AddStringConstant(m, "CUDA_TARGETS", FUSEDRNN_CUDA_TARGETS_STR) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
}

// The parameter arguments of both layer ops (ops.h LayerArgs), in order.
#define FUSEDRNN_LAYER_PARAMS                                                                      \
  "Tensor w_hh, Tensor? w_hr, Tensor? mask, int mask_mode, Tensor? lengths, bool reverse, "        \
  "int norm_mode, Tensor? bn_h_weight, Tensor? bn_c_weight, Tensor? bn_c_bias, "                   \
  "Tensor? bn_h_running_mean, Tensor? bn_h_running_var, Tensor? bn_c_running_mean, "               \
  "Tensor? bn_c_running_var, int bn_step_offset, float bn_eps, Tensor? zoneout_c, Tensor? zoneout_h"

// The signatures of the layer op's forward and backward (after the op's name).
#define FUSEDRNN_LAYER_FORWARD_SIG                                                                 \
  "(Tensor xp, Tensor h0, Tensor c0, " FUSEDRNN_LAYER_PARAMS ", bool save_workspace)"              \
  " -> (Tensor y, Tensor h_n, Tensor c_n, Tensor h_stats, Tensor c_stats, Tensor ws_h,"            \
  " Tensor ws_act, Tensor ws_c, Tensor ws_hh_hat, Tensor ws_hc)"
#define FUSEDRNN_LAYER_BACKWARD_SIG                                                                \
  "(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, " FUSEDRNN_LAYER_PARAMS ","                  \
  " Tensor h_stats, Tensor c_stats, Tensor ws_h, Tensor ws_act, Tensor ws_c, Tensor ws_hh_hat,"    \
  " Tensor ws_hc)"                                                                                 \
  " -> (Tensor grad_xp, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hh, Tensor grad_w_hr,"     \
  " Tensor grad_bn_h_weight, Tensor grad_bn_c_weight, Tensor grad_bn_c_bias)"

TORCH_LIBRARY(fusedrnn, m) {
  // Fused LSTM cell pointwise step.  Shapes: gates [B, 4H], cx [B, H].
  m.def("lstm_cell_forward(Tensor gates, Tensor cx) -> (Tensor hy, Tensor cy, Tensor act)",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor act, Tensor cx, Tensor cy)"
      " -> (Tensor grad_gates, Tensor grad_cx)",
      {at::Tag::pt2_compliant_tag});

  // The layer recurrence op: one LSTM layer, one direction, a whole sequence (see
  // fusedrnn/ops/contract.py for the exact semantics and the encodings; the Triton ops
  // fusedrnn_triton::lstm_layer_forward / _backward have the same schema).  Shapes: xp [T, B, G],
  // h0 [B, R], c0 [B, H], w_hh [G, R], w_hr [P, H], mask [B, R] (mask_mode 1, shared) or
  // [T, B, R] (mask_mode 2, per step), lengths [B] (int64); norm_mode 0 none, 1 batch norm in
  // training, 2 batch norm with the running statistics: BN weights [G] / [H], running
  // statistics [S, G] / [S, H]; zoneout_c [T, B, H] and zoneout_h [T, B, R] the zoneout weights of
  // the previous state (any strides; an expanded scalar is one rate for all).
  // Outputs: y [T, B, R], h_n [B, R], c_n [B, H]; batch statistics h_stats [T, 2, G] and
  // c_stats [T, 2, H] (mean, biased var; empty unless norm_mode 1); and the workspace kept
  // for backward (empty unless save_workspace): ws_h [T, B, R] (masked h entering W_hh),
  // ws_act [T, B, G] (activated gates), ws_c [T + 1, B, H] (cell states, c0 first),
  // ws_hh_hat [T, B, G] (normalised W_hh h, BN only), ws_hc [T, B, H] (h before W_hr, proj
  // only).  Workspace tensors are indexed by the step s (processing order).
  m.def("lstm_layer_forward" FUSEDRNN_LAYER_FORWARD_SIG, {at::Tag::pt2_compliant_tag});
  // Backward of lstm_layer_forward: the gradients of its three outputs, its parameter
  // arguments unchanged, then its statistics and workspace.  Returns grad_xp [T, B, G],
  // grad_h0, grad_c0, grad_w_hh [G, R], grad_w_hr [P, H] (empty without projection), and the
  // gradients of bn_h_weight, bn_c_weight, bn_c_bias (empty without batch norm).
  m.def("lstm_layer_backward" FUSEDRNN_LAYER_BACKWARD_SIG, {at::Tag::pt2_compliant_tag});
  // The CUDA layer op's two routes, with its schemas (csrc/cuda/register.cpp): _direct runs
  // the kernels (C++); _graphed (a Python kernel, fusedrnn/backends/cuda.py) replays a
  // captured _direct call of the same key from the step-graph cache.  The public op's CUDA
  // kernel takes _graphed for a per-step-design call while step graphs are on, else _direct.
  // Internal: called below autograd only.
  m.def("_cuda_layer_forward_direct" FUSEDRNN_LAYER_FORWARD_SIG);
  m.def("_cuda_layer_forward_graphed" FUSEDRNN_LAYER_FORWARD_SIG);
  m.def("_cuda_layer_backward_direct" FUSEDRNN_LAYER_BACKWARD_SIG);
  m.def("_cuda_layer_backward_graphed" FUSEDRNN_LAYER_BACKWARD_SIG);

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
  // bias [G] -> x @ weight^T + bias [..., G].  Backward returns grad_x, grad_weight, and
  // grad_bias [G] (empty when bias is False).
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("linear_backward(Tensor grad_y, Tensor x, Tensor weight, bool bias)"
        " -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
        {at::Tag::pt2_compliant_tag});

  // Which CUDA design the layer op picks for this shape on like's device, and why
  // (fusedrnn.explain reports it): persistent when ok, else per-step.
  m.def(
      "cuda_layer_plan(Tensor like, int B, int H, int R, bool proj, bool need_backward)"
      " -> (bool ok, str why, int units, int blocks, int smem_forward, int smem_backward)");
}
