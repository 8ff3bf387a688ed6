"""fusedrnn: fused LSTM and GRU kernels (Triton, CUDA, C++ CPU) with variational dropout,
recurrent batch norm and the other regularizers, as drop-in replacements for torch.nn.LSTM,
nn.LSTMCell, nn.GRU and nn.GRUCell.

    import fusedrnn
    lstm = fusedrnn.LSTM(256, 512, num_layers=2, recurrent_dropout=0.25, variational=True)
    model = fusedrnn.convert(model)          # every nn.LSTM / nn.GRU inside -> fusedrnn's
    with fusedrnn.patch(recurrent_dropout=0.25):
        model = build_third_party_model()    # its nn.LSTM(...) builds fusedrnn.LSTM

Layers:  models -> modules (LSTM, GRU, cells, convert, patch) -> ops (decisions) -> backends -> core.
Importing fusedrnn registers its classes for torch.load(weights_only=True) (fusedrnn.serialization).
"""

from . import ops, serialization
from .modules import GRU, LSTM, GRUCell, LSTMCell, Patch, convert, explain, patch
from .modules.regularizers import ExportError
from .ops import BackendError, available_backends

__version__ = "0.1.0"

serialization.register()

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "BackendError", "ExportError", "Patch", "available_backends", "convert", "explain",
           "ops", "patch"]
