"""The drop-in modules: :class:`LSTM`, :class:`LSTMCell`, :func:`convert`, :func:`explain`."""

from .cell import LSTMCell
from .convert import convert
from .explain import explain
from .lstm import LSTM

__all__ = ["LSTM", "LSTMCell", "convert", "explain"]
