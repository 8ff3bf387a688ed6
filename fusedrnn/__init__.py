"""fusedrnn: fused LSTM kernels (Triton, CUDA, C++ CPU) with variational dropout and
recurrent batch norm, as drop-in replacements for torch.nn.LSTM and torch.nn.LSTMCell.

    import fusedrnn
    lstm = fusedrnn.LSTM(256, 512, num_layers=2, recurrent_dropout=0.25, variational=True)
    model = fusedrnn.convert(model)          # every nn.LSTM inside -> fusedrnn.LSTM

Layers:  models -> modules (LSTM, LSTMCell, convert) -> ops (contract, dispatch) -> backends.
"""

from . import ops
from .modules import LSTM, LSTMCell, convert, explain
from .ops import BackendError, available_backends

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMCell", "BackendError", "available_backends", "convert", "explain", "ops"]
