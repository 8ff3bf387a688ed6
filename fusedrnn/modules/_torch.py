"""torch's own LSTM classes, bound once when fusedrnn is imported.

fusedrnn reaches torch's LSTM / LSTMCell (the "aten" path, nn.LSTM's argument checks,
:func:`fusedrnn.convert`'s targets) only through these names, never through
``torch.nn.LSTM``: a script that patches ``torch.nn.LSTM = fusedrnn.LSTM`` (or
:func:`fusedrnn.patch`) would otherwise make fusedrnn call itself.
"""

import torch.nn.modules.rnn as _rnn

TorchLSTM = _rnn.LSTM
TorchLSTMCell = _rnn.LSTMCell

assert TorchLSTM.__module__ == "torch.nn.modules.rnn" and TorchLSTMCell.__module__ == "torch.nn.modules.rnn", (
    "fusedrnn must be imported before torch.nn.modules.rnn.LSTM / LSTMCell are replaced")

__all__ = ["TorchLSTM", "TorchLSTMCell"]
