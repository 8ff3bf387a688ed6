"""The drop-in modules: :class:`LSTM`, :class:`LSTMCell`, :func:`convert`, :func:`patch`,
:func:`explain`."""

from .cell import LSTMCell
from .convert import convert
from .explain import explain
from .lstm import LSTM
from .patch import Patch, patch

__all__ = ["LSTM", "LSTMCell", "Patch", "convert", "explain", "patch"]
