"""fusedrnn.convert: swap every torch.nn.LSTM / nn.LSTMCell inside a model for the fused one."""

from __future__ import annotations

from torch import nn

from ._torch import TorchLSTM, TorchLSTMCell
from .cell import LSTMCell
from .lstm import LSTM
from .regularizers import check_option_names


def _replacement(m: nn.Module, options: dict) -> nn.Module:
    w = next(m.parameters())
    kw = dict(device=w.device, dtype=w.dtype, **options)
    if isinstance(m, TorchLSTM):
        new = LSTM(m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, float(m.dropout),
                   m.bidirectional, m.proj_size, **kw)
    else:
        new = LSTMCell(m.input_size, m.hidden_size, m.bias, **kw)
    missing, unexpected = new.load_state_dict(m.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("bn_", "ln_")) for k in missing), (missing, unexpected)
    new.train(m.training)
    return new


def convert(module: nn.Module, **options) -> nn.Module:
    """Replace every nn.LSTM and nn.LSTMCell in ``module`` with fusedrnn.LSTM / LSTMCell.

    The replacements hold the same weights (same values, device and dtype) and training
    mode; ``options`` (recurrent_dropout, variational, batch_norm, bn_max_steps,
    bn_momentum, bn_eps, zoneout, layer_norm, weight_dropout, backend) add regularizers or
    pick a backend.  Modules that are
    already fusedrnn modules are left alone.  Returns the model (the replacement itself
    when ``module`` is an nn.LSTM / nn.LSTMCell); submodules are replaced in place.
    """
    check_option_names(options, "convert")
    targets = (TorchLSTM, TorchLSTMCell)
    if isinstance(module, targets) and not isinstance(module, (LSTM, LSTMCell)):
        return _replacement(module, options)
    for name, child in list(module.named_children()):
        new = convert(child, **options)
        if new is not child:
            setattr(module, name, new)
    return module
