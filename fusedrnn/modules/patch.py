"""fusedrnn.patch: make ``torch.nn.LSTM`` / ``LSTMCell`` / ``GRU`` / ``GRUCell`` build fusedrnn
modules, for scripts that cannot be edited.

    handle = fusedrnn.patch(recurrent_dropout=0.25, variational=True)
    model = third_party.build_model()      # its nn.LSTM(...) is a fusedrnn.LSTM now
    handle.restore()                        # torch's own classes again

    with fusedrnn.patch(batch_norm=True):   # or as a context manager
        model = third_party.build_model()

While a patch is active, ``torch.nn.LSTM``, ``torch.nn.modules.LSTM`` and
``torch.nn.modules.rnn.LSTM`` (and the LSTMCell, GRU and GRUCell names) are fusedrnn's
classes, and the patch's options are the defaults of every module of
those classes built meanwhile, through any name (an option given explicitly still wins;
with nested patches, the innermost that swapped the class).  Models built under a patch keep
their fusedrnn modules after :meth:`Patch.restore`.  Patches nest; restore them innermost
first (a ``with`` block does).

torch.compile refuses modules that are instances of ``torch.nn.LSTM`` unless
``torch._dynamo.config.allow_rnn`` is set; while ``torch.nn.LSTM`` names fusedrnn.LSTM,
the patch sets it, so the patched modules compile (fusedrnn's ops trace), and restores it.
"""

from __future__ import annotations

import torch
import torch.nn.modules as _modules
import torch.nn.modules.rnn as _rnn

from . import regularizers
from .cell import GRUCell, LSTMCell
from .gru import GRU
from .lstm import LSTM

_HOMES = (torch.nn, _modules, _rnn)  # where code reaches the classes by name


class Patch:
    """An applied :func:`patch`: :meth:`restore` (or leaving its ``with`` block) puts back
    what was there before it."""

    def __init__(self, lstm: bool, cell: bool, options: dict, gru: bool = True):
        self.options = dict(options)
        self._saved = []
        swaps = ([("LSTM", LSTM)] if lstm else []) + ([("LSTMCell", LSTMCell)] if cell else []) + \
            ([("GRU", GRU)] if gru else []) + ([("GRUCell", GRUCell)] if gru and cell else [])
        for home in _HOMES:
            for name, cls in swaps:
                self._saved.append((home, name, getattr(home, name)))
                setattr(home, name, cls)
        self._allow_rnn = _dynamo_allow_rnn(True) if (lstm or gru) else None
        self._entry = (frozenset(name for name, _ in swaps), self.options)
        regularizers._patch_defaults.append(self._entry)
        self.active = True

    def restore(self) -> None:
        """Put back torch's classes (or what an outer patch had installed).  Idempotent."""
        if not self.active:
            return
        for home, name, old in reversed(self._saved):
            setattr(home, name, old)
        if self._allow_rnn is not None:
            _dynamo_allow_rnn(self._allow_rnn)
        stack = regularizers._patch_defaults
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is self._entry:
                del stack[i]
                break
        self.active = False

    def __enter__(self) -> "Patch":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"fusedrnn.patch({opts}) [{'active' if self.active else 'restored'}]"


def _dynamo_allow_rnn(value: bool):
    """Set torch._dynamo.config.allow_rnn; returns the previous value (None without Dynamo)."""
    try:
        from torch._dynamo import config
    except Exception:  # pragma: no cover - torch without Dynamo
        return None
    old = config.allow_rnn
    config.allow_rnn = value
    return old


def patch(*, lstm: bool = True, cell: bool = True, gru: bool = True, **options) -> Patch:
    """Swap ``torch.nn.LSTM`` (``lstm=True``), ``torch.nn.LSTMCell`` (``cell=True``),
    ``torch.nn.GRU`` (``gru=True``) and ``torch.nn.GRUCell`` (``gru`` and ``cell``) for
    fusedrnn's, so that models built afterwards use fusedrnn; ``options`` (recurrent_dropout,
    variational, batch_norm, bn_max_steps, bn_momentum, bn_eps, zoneout, layer_norm,
    weight_dropout, recompute, backend) become the defaults of the modules built meanwhile (a
    GRU takes one zoneout rate: a (cell, hidden) pair raises when a GRU is built; ``gru=False``
    leaves the GRUs alone).  Returns a :class:`Patch`: call ``restore()`` or use it as a context
    manager.  Options are validated at once (ValueError / TypeError)."""
    regularizers.check_option_names(options, "patch")
    regularizers.validate(**{**regularizers.OPTIONS, **options})
    return Patch(lstm, cell, options, gru)


__all__ = ["Patch", "patch"]
