"""Neural Turing Machine (Graves et al., arXiv 1410.5401) with a fusedrnn.LSTMCell controller.

Dimension letters: B batch, T steps, I input, O output, N memory slots, M slot width,
R read heads, W write heads, C controller size, Z = 2 * shift_range + 1 shift offsets.

Everything is batched tensor code on the input's device; a step has no host round-trip
(no .item(), no data-dependent Python control flow).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import LSTMCell
from ._common import lstm_options


def address(key: Tensor, beta: Tensor, gate: Tensor, shift: Tensor, gamma: Tensor, w_prev: Tensor,
            memory: Tensor, eps: float = 1e-8) -> Tensor:
    r"""NTM addressing for a group of heads.

    key [B, h, M], beta [B, h, 1] (>= 0), gate [B, h, 1] in (0, 1), shift [B, h, Z] (a softmax
    over offsets -r … r), gamma [B, h, 1] (>= 1), w_prev [B, h, N], memory [B, N, M]
    -> weights [B, h, N]:

        w_c = softmax(beta * cos(key, memory_i))           content
        w_g = gate * w_c + (1 - gate) * w_prev             interpolation
        w_s[i] = sum_j shift[j] * w_g[(i - j + r) mod N]   circular shift (offset j - r)
        w = w_s ** gamma / sum(w_s ** gamma)               sharpening
    """
    sim = F.cosine_similarity(key.unsqueeze(2), memory.unsqueeze(1), dim=-1, eps=eps)
    w_c = torch.softmax(beta * sim, dim=-1)
    w_g = gate * w_c + (1 - gate) * w_prev
    r = (shift.shape[-1] - 1) // 2
    w_s = sum(shift[..., j:j + 1] * torch.roll(w_g, j - r, dims=-1) for j in range(shift.shape[-1]))
    w = (w_s + 1e-12).pow(gamma)
    return w / (w.sum(-1, keepdim=True) + eps)


class NTM(nn.Module):
    r"""A Neural Turing Machine with an LSTM controller, several read and write heads.

    Each step: the controller (a fusedrnn.LSTMCell) reads [x_t; r_{t-1}] (r: the R read
    vectors of the previous step); its output h_t parameterizes every head through one
    linear layer (key, strength beta = softplus, gate = sigmoid, shift = softmax over
    2 * shift_range + 1 offsets, sharpening gamma = 1 + softplus; write heads also erase =
    sigmoid and add = tanh).  The write heads write first,

        memory <- memory * prod_w (1 - w_w e_w^T) + sum_w w_w a_w^T,

    then the read heads read r_t = w_r^T memory from the updated memory, and the output is
    y_t = W_o [h_t; r_t] (logits).  The memory starts at a constant 1e-6, head weights
    start on slot 0, the initial read vectors are learned.

    Args:
        input_size (I), output_size (O), controller_size (C), memory_size (N),
        memory_width (M), num_read_heads (R), num_write_heads (W), shift_range (int);
        recurrent_dropout, variational, batch_norm, backend: the controller's options (see
        :class:`fusedrnn.LSTMCell`; the variational mask is held for the whole sequence).

    Forward: x [B, T, I] -> logits [B, T, O]; with ``return_trace=True`` also a dict with
    "read_weights" [B, T, R, N] and "write_weights" [B, T, W, N].
    """

    def __init__(self, input_size: int, output_size: int, controller_size: int = 100, memory_size: int = 128,
                 memory_width: int = 20, num_read_heads: int = 1, num_write_heads: int = 1, shift_range: int = 1,
                 recurrent_dropout: float = 0.0, variational: bool = True, batch_norm: bool = False,
                 backend: str = "auto"):
        super().__init__()
        if num_read_heads < 1 or num_write_heads < 1:
            raise ValueError("NTM needs at least one read head and one write head")
        if not 0 <= shift_range < memory_size:
            raise ValueError(f"shift_range must be in [0, memory_size), got {shift_range}")
        self.N, self.M, self.R, self.W = memory_size, memory_width, num_read_heads, num_write_heads
        self.Z = 2 * shift_range + 1
        self.controller = LSTMCell(input_size + self.R * self.M, controller_size,
                                   **lstm_options(recurrent_dropout, variational, batch_norm, backend))
        self.addr_size = self.M + 3 + self.Z              # key, beta, gate, gamma, shift
        head_params = (self.R + self.W) * self.addr_size + self.W * 2 * self.M
        self.heads = nn.Linear(controller_size, head_params)
        self.output = nn.Linear(controller_size + self.R * self.M, output_size)
        self.read_init = nn.Parameter(torch.randn(self.R, self.M) * 0.01)
        self.register_buffer("memory_init", torch.full((self.N, self.M), 1e-6))
        w0 = torch.zeros(self.N)
        w0[0] = 1.0
        self.register_buffer("weight_init", w0)

    def _split(self, p: Tensor, n: int):
        """[B, n * addr_size] -> addressing parameters of n heads."""
        p = p.view(p.shape[0], n, self.addr_size)
        M = self.M
        key = p[..., :M]
        beta = F.softplus(p[..., M:M + 1])
        gate = torch.sigmoid(p[..., M + 1:M + 2])
        gamma = 1 + F.softplus(p[..., M + 2:M + 3])
        shift = torch.softmax(p[..., M + 3:], dim=-1)
        return key, beta, gate, shift, gamma

    def initial_state(self, B: int, device, dtype):
        """(memory [B, N, M], reads [B, R, M], read weights [B, R, N], write weights [B, W, N])."""
        mem = self.memory_init.to(dtype).expand(B, self.N, self.M)
        reads = self.read_init.to(dtype).unsqueeze(0).expand(B, self.R, self.M)
        w = self.weight_init.to(dtype)
        return mem, reads, w.expand(B, self.R, self.N), w.expand(B, self.W, self.N)

    def forward(self, x: Tensor, return_trace: bool = False):
        if x.dim() != 3:
            raise ValueError(f"NTM: x must be [B, T, I], got shape {tuple(x.shape)}")
        B, T, _ = x.shape
        mem, reads, w_r, w_w = self.initial_state(B, x.device, x.dtype)
        self.controller.reset()
        hc = None
        R, W, A, M = self.R, self.W, self.addr_size, self.M
        outs, trace_r, trace_w = [], [], []
        for t in range(T):
            hc = self.controller(torch.cat([x[:, t], reads.reshape(B, R * M)], -1), hc)
            h = hc[0]
            p = self.heads(h)
            p_read, p_write = p[:, :R * A], p[:, R * A:(R + W) * A]
            erase_add = p[:, (R + W) * A:].view(B, W, 2, M)
            erase, add = torch.sigmoid(erase_add[:, :, 0]), torch.tanh(erase_add[:, :, 1])
            w_w = address(*self._split(p_write, W), w_w, mem)
            # product over write heads; torch.prod's backward would sync (it checks for zeros)
            erase_terms = 1 - w_w.unsqueeze(-1) * erase.unsqueeze(2)                  # [B, W, N, M]
            keep = erase_terms[:, 0]
            for j in range(1, W):
                keep = keep * erase_terms[:, j]
            mem = mem * keep + torch.einsum("bwn,bwm->bnm", w_w, add)
            w_r = address(*self._split(p_read, R), w_r, mem)
            reads = torch.bmm(w_r, mem)                                                # [B, R, M]
            outs.append(self.output(torch.cat([h, reads.reshape(B, R * M)], -1)))
            if return_trace:
                trace_r.append(w_r)
                trace_w.append(w_w)
        y = torch.stack(outs, 1)
        if return_trace:
            return y, {"read_weights": torch.stack(trace_r, 1).detach(),
                       "write_weights": torch.stack(trace_w, 1).detach()}
        return y
