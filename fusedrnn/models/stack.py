"""Stack-augmented RNN (Joulin & Mikolov, arXiv 1503.01007) with a fusedrnn.LSTMCell
controller.

Dimension letters: B batch, T steps, I input, O output, H hidden, S stacks, D stack depth,
Wd stack element width, k elements read from the top.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..modules import LSTMCell
from ._common import lstm_options

EMPTY = -1.0  # value of an empty stack cell (Joulin & Mikolov)


class StackRNN(nn.Module):
    r"""An LSTM controller with S continuous stacks.

    Each step the controller reads [x_t; the top ``read_depth`` elements of every stack], then
    for every stack it chooses soft actions a = softmax(A h_t) over (push, pop, no-op) and a
    value v = sigmoid(P h_t) [Wd]; the stack becomes the mixture

        s_t[0] = a_push v + a_pop s_{t-1}[1] + a_noop s_{t-1}[0]
        s_t[i] = a_push s_{t-1}[i-1] + a_pop s_{t-1}[i+1] + a_noop s_{t-1}[i]

    (cells past the bottom read as empty, -1).  The output is y_t = W_o h_t (logits).  The
    stack depth is T + 1 (it can never hold more), so any length runs.  ``hard_eval`` rounds
    the actions to one-hot in eval mode (the discrete stack of the paper's evaluation).

    Args:
        input_size (I), output_size (O), hidden_size (H), num_stacks (S), stack_width (Wd),
        read_depth (k), hard_eval (bool);
        recurrent_dropout, variational, batch_norm, backend: see :class:`fusedrnn.LSTMCell`.

    Forward: x [B, T, I] -> logits [B, T, O]; with ``return_trace=True`` also
    {"actions": [B, T, S, 3], "top": [B, T, S, Wd]}.
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 64, num_stacks: int = 1,
                 stack_width: int = 1, read_depth: int = 2, hard_eval: bool = False,
                 recurrent_dropout: float = 0.0, variational: bool = True, batch_norm: bool = False,
                 backend: str = "auto"):
        super().__init__()
        if num_stacks < 1 or stack_width < 1 or read_depth < 1:
            raise ValueError("StackRNN: num_stacks, stack_width and read_depth must be >= 1")
        self.S, self.Wd, self.k, self.hard_eval = num_stacks, stack_width, read_depth, hard_eval
        self.controller = LSTMCell(input_size + self.S * self.k * self.Wd, hidden_size,
                                   **lstm_options(recurrent_dropout, variational, batch_norm, backend))
        self.actions = nn.Linear(hidden_size, self.S * 3)
        self.values = nn.Linear(hidden_size, self.S * self.Wd)
        self.output = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, return_trace: bool = False):
        if x.dim() != 3:
            raise ValueError(f"StackRNN: x must be [B, T, I], got shape {tuple(x.shape)}")
        B, T, _ = x.shape
        S, Wd, k = self.S, self.Wd, self.k
        depth = max(T + 1, k)
        stack = x.new_full((B, S, depth, Wd), EMPTY)
        bottom = x.new_full((B, S, 1, Wd), EMPTY)
        self.controller.reset()
        hc = None
        outs, acts, tops = [], [], []
        for t in range(T):
            top = stack[:, :, :k].reshape(B, S * k * Wd)
            hc = self.controller(torch.cat([x[:, t], top], -1), hc)
            h = hc[0]
            a = torch.softmax(self.actions(h).view(B, S, 3), -1)
            if self.hard_eval and not self.training:
                a = torch.nn.functional.one_hot(a.argmax(-1), 3).to(a.dtype)
            v = torch.sigmoid(self.values(h)).view(B, S, 1, Wd)
            push = torch.cat([v, stack[:, :, :-1]], 2)
            pop = torch.cat([stack[:, :, 1:], bottom], 2)
            a4 = a.view(B, S, 3, 1, 1)
            stack = a4[:, :, 0] * push + a4[:, :, 1] * pop + a4[:, :, 2] * stack
            outs.append(self.output(h))
            if return_trace:
                acts.append(a)
                tops.append(stack[:, :, 0])
        y = torch.stack(outs, 1)
        if return_trace:
            return y, {"actions": torch.stack(acts, 1).detach(), "top": torch.stack(tops, 1).detach()}
        return y
