"""The per-step loop a user writes today without fusedrnn, with the same regularizers:
nn.Linear for both projections, one nn.BatchNorm1d per step (and per normalised
quantity), the same variational / per-step recurrent mask.  The benchmark's "loop"
provider; also a readable statement of what the fused kernels replace.

Dimension letters: T steps, B batch, I input, H hidden, G = 4H (the GRU's 3H).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LoopLSTM(nn.Module):
    """One LSTM layer as a Python loop over steps.  Input [T, B, I] -> output [T, B, H]."""

    GATES = 4

    def __init__(self, input_size: int, hidden_size: int, *, recurrent_dropout: float = 0.0,
                 variational: bool = False, batch_norm: bool = False, max_steps: int = 1000):
        super().__init__()
        G = self.GATES * hidden_size
        self.hidden_size = hidden_size
        self.recurrent_dropout = recurrent_dropout
        self.variational = variational
        self.batch_norm = batch_norm
        self.ih = nn.Linear(input_size, G)
        self.hh = nn.Linear(hidden_size, G, bias=not batch_norm)
        if batch_norm:
            self.bn_x = nn.ModuleList(nn.BatchNorm1d(G) for _ in range(max_steps))
            self.bn_h = nn.ModuleList(nn.BatchNorm1d(G) for _ in range(max_steps))
            if self.GATES == 4:
                self.bn_c = nn.ModuleList(nn.BatchNorm1d(hidden_size) for _ in range(max_steps))

    def _steps(self, x: Tensor):
        """Yields, for each step t, (t, k, gx, hh): the batch-norm slot k, the input part of the
        gates gx = BN_x(W_ih x_t + b_ih), and hh(h) = BN_h(W_hh (h * m_t) + b_hh), the recurrent
        part with the step's mask (shared or fresh)."""
        T, B, _ = x.shape
        p = self.recurrent_dropout if self.training else 0.0
        shape = (B, self.hidden_size)
        mask = torch.bernoulli(x.new_full(shape, 1 - p)) / (1 - p) if p > 0 and self.variational else None
        for t in range(T):
            m = None
            if p > 0:
                m = mask if self.variational else torch.bernoulli(x.new_full(shape, 1 - p)) / (1 - p)
            k = min(t, len(self.bn_x) - 1) if self.batch_norm else 0
            gx = self.bn_x[k](self.ih(x[t])) if self.batch_norm else self.ih(x[t])

            def hh(h, m=m, k=k):
                v = self.hh(h if m is None else h * m)
                return self.bn_h[k](v) if self.batch_norm else v
            yield t, k, gx, hh

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        T, B, _ = x.shape
        h = x.new_zeros(B, self.hidden_size)
        c = x.new_zeros(B, self.hidden_size)
        ys = []
        for t, k, gx, hh in self._steps(x):
            gates = gx + hh(h)
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            c_out = self.bn_c[k](c) if self.batch_norm else c
            h = torch.sigmoid(o) * torch.tanh(c_out)
            ys.append(h)
        return torch.stack(ys), (h, c)


class LoopGRU(LoopLSTM):
    """One GRU layer as a Python loop over steps (torch's gates r, z, n; b_hn inside the reset
    product), with the LSTM loop's regularizers.  Input [T, B, I] -> output [T, B, H]."""

    GATES = 3

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        T, B, _ = x.shape
        h = x.new_zeros(B, self.hidden_size)
        ys = []
        for t, k, gx, hh in self._steps(x):
            x_r, x_z, x_n = gx.chunk(3, 1)
            h_r, h_z, h_n = hh(h).chunk(3, 1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            h = (1 - z) * torch.tanh(x_n + r * h_n) + z * h
            ys.append(h)
        return torch.stack(ys), h
