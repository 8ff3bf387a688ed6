// The CPU kernels of every fusedrnn:: op: the one TORCH_LIBRARY_IMPL(fusedrnn, CPU) block.
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("lstm_cell_forward", &fusedrnn::lstm_cell_forward_cpu);
  m.impl("lstm_cell_backward", &fusedrnn::lstm_cell_backward_cpu);
  m.impl("lstm_layer_forward", &fusedrnn::lstm_layer_forward_cpu);
  m.impl("lstm_layer_backward", &fusedrnn::lstm_layer_backward_cpu);
  m.impl("gru_layer_forward", &fusedrnn::gru_layer_forward_cpu);
  m.impl("gru_layer_backward", &fusedrnn::gru_layer_backward_cpu);
  m.impl("batch_norm_steps_forward", &fusedrnn::batch_norm_steps_forward_cpu);
  m.impl("batch_norm_steps_backward", &fusedrnn::batch_norm_steps_backward_cpu);
  m.impl("linear", &fusedrnn::linear_cpu);
  m.impl("linear_backward", &fusedrnn::linear_backward_cpu);
  m.impl("drop_connect", &fusedrnn::drop_connect_cpu);
}
