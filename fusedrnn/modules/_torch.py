"""torch's own LSTM and GRU classes, bound once when fusedrnn is imported.

fusedrnn reaches torch's LSTM / LSTMCell / GRU / GRUCell (the "aten" path, torch's argument
checks, :func:`fusedrnn.convert`'s targets) only through these names, never through
``torch.nn.LSTM``: a script that patches ``torch.nn.LSTM = fusedrnn.LSTM`` (or
:func:`fusedrnn.patch`) would otherwise make fusedrnn call itself.
"""

import torch.nn.modules.rnn as _rnn

TorchLSTM = _rnn.LSTM
TorchLSTMCell = _rnn.LSTMCell
TorchGRU = _rnn.GRU
TorchGRUCell = _rnn.GRUCell

assert all(c.__module__ == "torch.nn.modules.rnn" for c in (TorchLSTM, TorchLSTMCell, TorchGRU, TorchGRUCell)), (
    "fusedrnn must be imported before torch.nn.modules.rnn's LSTM / LSTMCell / GRU / GRUCell are replaced")

__all__ = ["TorchGRU", "TorchGRUCell", "TorchLSTM", "TorchLSTMCell"]
