"""fusedrnn.convert: swap every torch.nn.LSTM / nn.LSTMCell / nn.GRU / nn.GRUCell inside a model
for the fused one.

The replacement adopts the original module's nn.Parameter objects and buffers: the same
tensors (identity, requires_grad, sharing with other modules, their hooks, device and
dtype), in the same order, so that anything a user or an optimizer already holds keeps
training the model.  Only the fusedrnn options' own parameters (batch norm, layer norm) are
new.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from ._torch import TorchGRU, TorchGRUCell, TorchLSTM, TorchLSTMCell
from .cell import GRUCell, LSTMCell
from .gru import GRU
from .lstm import LSTM
from .rnn import FusedRNN
from .regularizers import check_option_names

# the module hooks a replacement takes over (forward, backward, state-dict hooks)
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _replacement(m: nn.Module, options: dict) -> nn.Module:
    """The fused module for ``m``, holding m's own parameters and buffers."""
    if parametrize.is_parametrized(m):
        raise ValueError(f"convert(): the {type(m).__name__}'s weights are parametrized "
                         "(torch.nn.utils.parametrize): the fused module cannot adopt them; remove the "
                         "parametrization first, or keep this module as it is")
    w = next(m.parameters())
    # on the meta device: no allocation and no draws from the generator for weights replaced below
    kw = dict(device="meta", dtype=w.dtype, **options)
    if isinstance(m, TorchLSTM):
        new = LSTM(m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, float(m.dropout),
                   m.bidirectional, m.proj_size, **kw)
    elif isinstance(m, TorchGRU):
        new = GRU(m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, float(m.dropout),
                  m.bidirectional, **kw)
    else:
        new = (LSTMCell if isinstance(m, TorchLSTMCell) else GRUCell)(m.input_size, m.hidden_size, m.bias, **kw)
    for k in m._parameters:  # adopted below: not allocated here
        new._parameters.pop(k, None)
    new.to_empty(device=w.device)
    for suffix in (new._suffixes() if isinstance(new, FusedRNN) else [""]):  # the options' parameters: fresh
        if new.batch_norm:
            new._reset_bn(suffix)
        if new.layer_norm:
            new._reset_ln(suffix)
    for table, theirs in ((new._parameters, m._parameters), (new._buffers, m._buffers)):
        own = {k: v for k, v in table.items() if k not in theirs}
        table.clear()
        table.update(theirs)  # the same objects, in m's order (optimizers, DDP buckets), then the options'
        table.update(own)
    new._non_persistent_buffers_set |= m._non_persistent_buffers_set
    for name in _HOOK_DICTS:
        if hasattr(m, name) and hasattr(new, name):
            getattr(new, name).update(getattr(m, name))
    if isinstance(new, FusedRNN):
        new._init_flat_weights()
    new.train(m.training)
    return new


def convert(module: nn.Module, *, lstm: bool = True, gru: bool = True, **options) -> nn.Module:
    """Replace every nn.LSTM / nn.LSTMCell (``lstm``) and nn.GRU / nn.GRUCell (``gru``) in
    ``module`` with fusedrnn's.

    The replacements hold the original modules' own nn.Parameter objects and buffers (the
    same tensors: identity, requires_grad, weights shared or tied with other modules, their
    hooks, device and dtype, in the same order; an optimizer built before the conversion
    keeps training the model), their module hooks and their training mode.  ``options``
    (recurrent_dropout, variational, batch_norm, bn_max_steps, bn_momentum, bn_eps, zoneout,
    layer_norm, weight_dropout, recompute, backend) add regularizers (whose parameters are
    new), choose how norms keep their products, or pick a backend.  Modules that are already
    fusedrnn modules are left alone.  Returns the model (the replacement itself when
    ``module`` is one of those classes); submodules are replaced in place.  Raises ValueError
    for a module whose weights are parametrized, and for a zoneout pair given to a GRU (one
    rate).
    """
    check_option_names(options, "convert")
    targets = ((TorchLSTM, TorchLSTMCell) if lstm else ()) + ((TorchGRU, TorchGRUCell) if gru else ())
    if isinstance(module, targets) and not isinstance(module, (FusedRNN, LSTMCell, GRUCell)):
        return _replacement(module, options)
    for name, child in list(module.named_children()):
        new = convert(child, lstm=lstm, gru=gru, **options)
        if new is not child:
            setattr(module, name, new)
    return module
