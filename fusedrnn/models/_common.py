"""Small helpers shared by the reference models."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class LockedDropout(nn.Module):
    """Variational (locked) dropout on a sequence: one [B, 1, F] mask per sequence, the same at
    every step (Gal & Ghahramani).  Input [B, T, F] (or [B, F]: plain dropout); identity in eval.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout should be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        shape = (x.shape[0], 1, x.shape[2]) if x.dim() == 3 else x.shape
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def lstm_options(recurrent_dropout: float, variational: bool, batch_norm: bool, backend: str) -> dict:
    """The regularizer keyword arguments of fusedrnn.LSTM / LSTMCell."""
    return dict(recurrent_dropout=recurrent_dropout, variational=variational, batch_norm=batch_norm,
                backend=backend)


def length_mask(lengths: Optional[Tensor], B: int, T: int, device) -> Tensor:
    """[B, T] bool, True at steps t < lengths[b] (all True when lengths is None)."""
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    return torch.arange(T, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)


def check_input_spec(name: str, vocab_size: Optional[int], input_size: Optional[int]) -> None:
    if (vocab_size is None) == (input_size is None):
        raise ValueError(f"{name}: give exactly one of vocab_size (token inputs) or input_size "
                         f"(feature inputs), got vocab_size={vocab_size!r}, input_size={input_size!r}")
