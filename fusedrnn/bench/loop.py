"""The per-step loop a user writes today without fusedrnn, with the same regularizers:
nn.Linear for both projections, one nn.BatchNorm1d per step (and per normalised
quantity), the same variational / per-step recurrent mask.  The benchmark's "loop"
provider; also a readable statement of what the fused kernels replace.

Dimension letters: T steps, B batch, I input, H hidden, G = 4H.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LoopLSTM(nn.Module):
    """One LSTM layer as a Python loop over steps.  Input [T, B, I] -> output [T, B, H]."""

    def __init__(self, input_size: int, hidden_size: int, *, recurrent_dropout: float = 0.0,
                 variational: bool = False, batch_norm: bool = False, max_steps: int = 1000):
        super().__init__()
        G = 4 * hidden_size
        self.hidden_size = hidden_size
        self.recurrent_dropout = recurrent_dropout
        self.variational = variational
        self.batch_norm = batch_norm
        self.ih = nn.Linear(input_size, G)
        self.hh = nn.Linear(hidden_size, G, bias=not batch_norm)
        if batch_norm:
            self.bn_x = nn.ModuleList(nn.BatchNorm1d(G) for _ in range(max_steps))
            self.bn_h = nn.ModuleList(nn.BatchNorm1d(G) for _ in range(max_steps))
            self.bn_c = nn.ModuleList(nn.BatchNorm1d(hidden_size) for _ in range(max_steps))

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        T, B, _ = x.shape
        h = x.new_zeros(B, self.hidden_size)
        c = x.new_zeros(B, self.hidden_size)
        p = self.recurrent_dropout if self.training else 0.0
        mask = None
        if p > 0 and self.variational:
            mask = torch.bernoulli(torch.full_like(h, 1 - p)) / (1 - p)
        ys = []
        for t in range(T):
            h_in = h
            if p > 0:
                m = mask if self.variational else torch.bernoulli(torch.full_like(h, 1 - p)) / (1 - p)
                h_in = h * m
            if self.batch_norm:
                k = min(t, len(self.bn_x) - 1)
                gates = self.bn_x[k](self.ih(x[t])) + self.bn_h[k](self.hh(h_in))
            else:
                gates = self.ih(x[t]) + self.hh(h_in)
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            c_out = self.bn_c[k](c) if self.batch_norm else c
            h = torch.sigmoid(o) * torch.tanh(c_out)
            ys.append(h)
        return torch.stack(ys), (h, c)
