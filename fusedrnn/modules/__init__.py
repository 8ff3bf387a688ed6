"""The drop-in modules: :class:`LSTM`, :class:`LSTMCell`, :func:`convert`, :func:`patch`,
:func:`explain`, and :class:`LockedDropout` (the models' sequence dropout)."""

from .cell import LSTMCell
from .convert import convert
from .dropout import LockedDropout
from .explain import explain
from .lstm import LSTM
from .patch import Patch, patch

__all__ = ["LSTM", "LSTMCell", "LockedDropout", "Patch", "convert", "explain", "patch"]
