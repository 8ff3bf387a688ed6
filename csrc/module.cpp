// fusedrnn._C: the schemas of every fusedrnn:: op (the one TORCH_LIBRARY block) and an
// empty Python module, so `import fusedrnn._C` loads the library and its registrations.
// Kernels register per device in cpu/register.cpp and cuda/register.cpp; fake (meta)
// kernels and autograd are registered in Python (fusedrnn/ops/).
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fusedrnn compiled ops (registered under torch.ops.fusedrnn)",
      -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fusedrnn, m) {
  // Fused LSTM cell pointwise step.  Shapes: gates [B, 4H], cx [B, H].
  m.def("lstm_cell_forward(Tensor gates, Tensor cx) -> (Tensor hy, Tensor cy, Tensor act)",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor act, Tensor cx, Tensor cy)"
      " -> (Tensor grad_gates, Tensor grad_cx)",
      {at::Tag::pt2_compliant_tag});
}
