"""Whole-model save and load: fusedrnn's classes under ``torch.load(weights_only=True)``.

Since torch 2.6, ``torch.load`` unpickles only allow-listed classes by default.  Scripts
that save whole models (``torch.save(model, f)``) load them under an allow-list of what
they expect; a model with fusedrnn inside would be refused.  Importing fusedrnn therefore
registers, with ``torch.serialization.add_safe_globals``:

- fusedrnn's module classes (:class:`fusedrnn.LSTM`, :class:`fusedrnn.LSTMCell`,
  :class:`fusedrnn.GRU`, :class:`fusedrnn.GRUCell`) and the
  reference models of :mod:`fusedrnn.models` with their submodule classes;
- the torch.nn layer classes those models are built of (Embedding, Linear, Dropout,
  Identity, ReLU, Sequential), so that a saved reference model loads under the default
  ``torch.load``.

Their pickled state holds only tensors, primitive values and containers, and these classes
(tests/test_serialization.py checks every class with every option).  Each class is
registered under its full name, ``(cls, "module.Class")``, so a client's
``torch.serialization.safe_globals([...])`` block that lists the same class (for example
torch's LSTM name while :func:`fusedrnn.patch` is active) does not remove it on exit.
"""

from __future__ import annotations

import torch
from torch import nn


def safe_classes() -> list[type]:
    """Every class a pickled fusedrnn module or reference model refers to, beyond what
    torch allows by default."""
    from . import models
    from .models.tagger import _Encoder
    from .modules import GRU, LSTM, GRUCell, LockedDropout, LSTMCell

    ours = [LSTM, LSTMCell, GRU, GRUCell, LockedDropout, _Encoder] + [getattr(models, n) for n in models.__all__]
    return ours + [nn.Embedding, nn.Linear, nn.Dropout, nn.Identity, nn.ReLU, nn.Sequential]


def full_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register() -> None:
    """Add :func:`safe_classes` to torch's weights_only allow-list (idempotent)."""
    torch.serialization.add_safe_globals([(cls, full_name(cls)) for cls in safe_classes()])


__all__ = ["full_name", "register", "safe_classes"]
