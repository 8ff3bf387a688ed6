"""Small helpers shared by the reference models."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


CELLS = ("lstm", "gru")


def lstm_options(recurrent_dropout: float, variational: bool, batch_norm: bool, backend: str, *,
                 zoneout: float = 0.0, layer_norm: bool = False, weight_dropout: float = 0.0) -> dict:
    """The regularizer keyword arguments of fusedrnn.LSTM / LSTMCell (and GRU / GRUCell)."""
    return dict(recurrent_dropout=recurrent_dropout, variational=variational, batch_norm=batch_norm,
                backend=backend, zoneout=zoneout, layer_norm=layer_norm, weight_dropout=weight_dropout)


def rnn_class(name: str, cell: str):
    """fusedrnn.LSTM for cell "lstm", fusedrnn.GRU for "gru" (a model's ``cell`` argument)."""
    from ..modules import GRU, LSTM

    if cell not in CELLS:
        raise ValueError(f"{name}: cell must be one of {CELLS}, got {cell!r}")
    return LSTM if cell == "lstm" else GRU


def final_h(state):
    """h_n of an LSTM's (h_n, c_n) or a GRU's h_n."""
    return state[0] if isinstance(state, tuple) else state


def length_mask(lengths: Optional[Tensor], B: int, T: int, device) -> Tensor:
    """[B, T] bool, True at steps t < lengths[b] (all True when lengths is None)."""
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    return torch.arange(T, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)


def check_input_spec(name: str, vocab_size: Optional[int], input_size: Optional[int]) -> None:
    if (vocab_size is None) == (input_size is None):
        raise ValueError(f"{name}: give exactly one of vocab_size (token inputs) or input_size "
                         f"(feature inputs), got vocab_size={vocab_size!r}, input_size={input_size!r}")
