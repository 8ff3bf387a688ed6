"""fusedrnn: fused LSTM kernels (Triton, CUDA, C++ CPU) with variational dropout and
recurrent batch norm, as drop-in replacements for torch.nn.LSTM and torch.nn.LSTMCell.

    import fusedrnn
    lstm = fusedrnn.LSTM(256, 512, num_layers=2, recurrent_dropout=0.25, variational=True)
    model = fusedrnn.convert(model)          # every nn.LSTM inside -> fusedrnn.LSTM
    with fusedrnn.patch(recurrent_dropout=0.25):
        model = build_third_party_model()    # its nn.LSTM(...) builds fusedrnn.LSTM

Layers:  models -> modules (LSTM, LSTMCell, convert, patch) -> ops (contract, dispatch) -> backends.
Importing fusedrnn registers its classes for torch.load(weights_only=True) (fusedrnn.serialization).
"""

from . import ops, serialization
from .modules import LSTM, LSTMCell, Patch, convert, explain, patch
from .modules.regularizers import ExportError
from .ops import BackendError, available_backends

__version__ = "0.1.0"

serialization.register()

__all__ = ["LSTM", "LSTMCell", "BackendError", "ExportError", "Patch", "available_backends", "convert", "explain",
           "ops", "patch"]
