// The CUDA kernels of every fusedrnn:: op: the one TORCH_LIBRARY_IMPL(fusedrnn, CUDA) block (host
// code in cell_host.cpp, batch_norm_host.cpp, layer_host.cpp), and the CUDA host's internal test
// op, which takes no tensor (CompositeExplicitAutograd: it runs without a GPU).
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("cuda_persistent_layout", &fusedrnn::cuda_persistent_layout_cuda);
  m.impl("lstm_cell_forward", &fusedrnn::lstm_cell_forward_cuda);
  m.impl("lstm_cell_backward", &fusedrnn::lstm_cell_backward_cuda);
  m.impl("lstm_layer_forward", &fusedrnn::lstm_layer_forward_cuda);
  m.impl("lstm_layer_backward", &fusedrnn::lstm_layer_backward_cuda);
  m.impl("batch_norm_steps_forward", &fusedrnn::batch_norm_steps_forward_cuda);
  m.impl("batch_norm_steps_backward", &fusedrnn::batch_norm_steps_backward_cuda);
}

TORCH_LIBRARY_IMPL(fusedrnn, CompositeExplicitAutograd, m) {
  m.impl("_cuda_launch_refused", &fusedrnn::cuda_launch_refused);
}
