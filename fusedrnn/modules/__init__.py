"""The drop-in modules: :class:`LSTM`, :class:`LSTMCell`, :class:`GRU`, :class:`GRUCell`,
:func:`convert`, :func:`patch`, :func:`explain`, and :class:`LockedDropout` (the models'
sequence dropout)."""

from .cell import GRUCell, LSTMCell
from .convert import convert
from .dropout import LockedDropout
from .explain import explain
from .gru import GRU
from .lstm import LSTM
from .patch import Patch, patch

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "LockedDropout", "Patch", "convert", "explain", "patch"]
