"""The reference backend: the op contract (recurrence, input norm, cell step) in plain
PyTorch, a loop over steps with autograd.  It is the oracle for every test and the fallback
for anything a fast path cannot do.  Readable first, fast never.  It imports no other
backend and runs no compiled code.

Dimension letters: T steps, B batch, H hidden, R width of h (proj_size or H), G = 4H.
Low-precision inputs (fp16 / bf16) are computed in fp32, outputs cast back.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.contract import (
    Backend,
    BatchStats,
    CellKind,
    Config,
    Norm,
    RecurrenceResult,
    RecurrentBN,
    RecurrentLN,
    Zoneout,
    acc_dtype,
    active_rows,
    reverse_sequences,
)


def batch_norm_steps(
    v: Tensor,
    active: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    slots: Tensor,
    training: bool,
    eps: float,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Per-step batch norm of v [T, B, F] (statistics over B, separately for each step).

    Training: statistics over the active rows of each step (active [T, B] bool or None),
    biased variance; returns (out, mean [T, F], var [T, F]) with the statistics detached.
    Eval: running statistics of the given slots [T]; returns (out, None, None).
    Inactive rows (padding) come out as 0 (+ bias).  Differentiable through the batch
    statistics.
    """
    if training:
        if active is None:
            mean = v.mean(1)
            # an empty batch has no statistics: NaN, as nn.BatchNorm1d (without its warning)
            var = v.var(1, unbiased=False) if v.shape[1] else mean.clone()
        else:
            a = active.to(v.dtype).unsqueeze(2)  # [T, B, 1]
            n = a.sum(1).clamp(min=1)  # [T, 1]
            mean = (v * a).sum(1) / n
            var = (((v - mean.unsqueeze(1)) * a) ** 2).sum(1) / n
        stats = (mean.detach(), var.detach())
    else:
        mean = running_mean.index_select(0, slots).to(v.dtype)
        var = running_var.index_select(0, slots).to(v.dtype)
        stats = (None, None)
    out = (v - mean.unsqueeze(1)) * torch.rsqrt(var.unsqueeze(1) + eps) * weight.to(v.dtype)
    if active is not None:  # finished rows (padding) normalise to 0
        out = out * active.to(v.dtype).unsqueeze(2)
    if bias is not None:
        out = out + bias.to(v.dtype)
    return out, stats[0], stats[1]


class ReferenceBackend(Backend):
    name = "reference"
    cells = (CellKind.LSTM, CellKind.GRU)

    def recurrence(self, cfg: Config, xp: Tensor, h0: Tensor, c0: Optional[Tensor], w_hh: Tensor,
                   w_hr: Optional[Tensor], mask: Optional[Tensor], lengths: Optional[Tensor], norm: Optional[Norm],
                   zoneout: Optional[Zoneout] = None, b_hh: Optional[Tensor] = None) -> RecurrenceResult:
        if cfg.cell == CellKind.GRU:
            return gru_recurrence(cfg, xp, h0, w_hh, b_hh, mask, lengths, norm, zoneout)
        out_dtype = xp.dtype
        acc = acc_dtype(xp.dtype)
        reverse = cfg.reverse
        xp, h0, c0, w_hh = (t.to(acc) for t in (xp, h0, c0, w_hh))
        w_hr = None if w_hr is None else w_hr.to(acc)
        mask = None if mask is None else mask.to(acc)
        T = xp.shape[0]
        if reverse:
            xp = reverse_sequences(xp, lengths)  # now in processing order
        active = active_rows(T, lengths, xp.device)  # [T, B] or None
        ln = norm if isinstance(norm, RecurrentLN) else None
        bn = norm if isinstance(norm, RecurrentBN) else None
        if ln is not None:
            G, H = w_hh.shape[0], c0.shape[1]
            ln_h = lambda v: F.layer_norm(v, (G,), ln.weight_h.to(acc), ln.bias_h.to(acc), ln.eps)  # noqa: E731
            ln_c = lambda v: F.layer_norm(v, (H,), ln.weight_c.to(acc), ln.bias_c.to(acc), ln.eps)  # noqa: E731
        if zoneout is not None:
            zc, zh = zoneout.c.to(acc), zoneout.h.to(acc)
        slots = None if bn is None else bn.slot_index(T, xp.device)

        h, c = h0, c0
        ys, stats = [], []
        for s in range(T):
            a = None if active is None else active[s : s + 1]  # [1, B]
            h_in = h
            if mask is not None:
                h_in = h * (mask if mask.dim() == 2 else mask[s])
            hh = h_in @ w_hh.t()  # [B, G]
            if ln is not None:
                hh = ln_h(hh)
            if bn is not None:
                hh, mean_h, var_h = batch_norm_steps(
                    hh.unsqueeze(0), a, bn.weight_h, None, bn.running_mean_h,
                    bn.running_var_h, slots[s : s + 1], bn.training, bn.eps,
                )
                hh = hh.squeeze(0)
            i, f, g, o = (xp[s] + hh).chunk(4, 1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c_new = f * c + i * g  # c~
            c_hat = c_new if ln is None else ln_c(c_new)
            if bn is not None:
                c_hat, mean_c, var_c = batch_norm_steps(
                    c_new.unsqueeze(0), a, bn.weight_c, bn.bias_c, bn.running_mean_c,
                    bn.running_var_c, slots[s : s + 1], bn.training, bn.eps,
                )
                c_hat = c_hat.squeeze(0)
                if bn.training:
                    stats.append((mean_h, var_h, mean_c, var_c))
            h_new = o * torch.tanh(c_hat)
            if w_hr is not None:
                h_new = h_new @ w_hr.t()
            if zoneout is not None:  # the previous state where the unit zones out
                c_new = zc[s] * c + (1 - zc[s]) * c_new
                h_new = zh[s] * h + (1 - zh[s]) * h_new
            if a is None:
                h, c, y = h_new, c_new, h_new
            else:
                keep = a.t()  # [B, 1]
                h = torch.where(keep, h_new, h)
                c = torch.where(keep, c_new, c)
                y = torch.where(keep, h_new, torch.zeros_like(h_new))
            ys.append(y)

        y = torch.stack(ys) if ys else xp.new_zeros(0, h0.shape[0], h0.shape[1])
        if reverse:
            y = reverse_sequences(y, lengths)
        batch_stats = None
        if stats:
            batch_stats = BatchStats(*(torch.cat(z) for z in zip(*stats)))
        return RecurrenceResult(y.to(out_dtype), h.to(out_dtype), c.to(out_dtype), batch_stats)

    def input_norm(self, cfg: Config, xw: Tensor, bias: Optional[Tensor], lengths: Optional[Tensor],
                   bn: RecurrentBN, slots: Tensor) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        T = xw.shape[0]
        xs = reverse_sequences(xw, lengths) if cfg.reverse else xw  # processing order
        xs, mean, var = batch_norm_steps(xs, active_rows(T, lengths, xw.device), bn.weight_x, None,
                                         bn.running_mean_x, bn.running_var_x, slots, bn.training, bn.eps)
        xp = reverse_sequences(xs, lengths) if cfg.reverse else xs
        return (xp if bias is None else xp + bias), mean, var

    def cell(self, gates: Tensor, cx: Tensor) -> tuple[Tensor, Tensor]:
        acc = acc_dtype(gates.dtype)
        i, f, g, o = gates.to(acc).chunk(4, 1)
        cy = torch.sigmoid(f) * cx.to(acc) + torch.sigmoid(i) * torch.tanh(g)
        hy = torch.sigmoid(o) * torch.tanh(cy)
        return hy.to(gates.dtype), cy.to(gates.dtype)


def gru_recurrence(cfg: Config, xp: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], mask: Optional[Tensor],
                   lengths: Optional[Tensor], norm: Optional[Norm], zoneout: Optional[Zoneout]) -> RecurrenceResult:
    """The GRU recurrence (torch's gates r, z, n; b_hh inside the reset product) on xp [T, B, 3H]
    = N_x(x W_ih^T) + b_ih; N_h is batch norm (gain only) or layer norm (gain; its bias is in
    b_hh) of (h_{s-1} * m_s) W_hh^T."""
    out_dtype = xp.dtype
    acc = acc_dtype(xp.dtype)
    xp, h0, w_hh = (t.to(acc) for t in (xp, h0, w_hh))
    b_hh = None if b_hh is None else b_hh.to(acc)
    mask = None if mask is None else mask.to(acc)
    T, G = xp.shape[0], w_hh.shape[0]
    if cfg.reverse:
        xp = reverse_sequences(xp, lengths)  # processing order
    active = active_rows(T, lengths, xp.device)
    ln = norm if isinstance(norm, RecurrentLN) else None
    bn = norm if isinstance(norm, RecurrentBN) else None
    slots = None if bn is None else bn.slot_index(T, xp.device)
    zh = None if zoneout is None else zoneout.h.to(acc)
    h, ys, stats = h0, [], []
    for s in range(T):
        a = None if active is None else active[s : s + 1]
        h_in = h if mask is None else h * (mask if mask.dim() == 2 else mask[s])
        hg = h_in @ w_hh.t()  # [B, 3H]
        if ln is not None:
            hg = F.layer_norm(hg, (G,), ln.weight_h.to(acc), None, ln.eps)
        if bn is not None:
            hg, mean_h, var_h = batch_norm_steps(hg.unsqueeze(0), a, bn.weight_h, None, bn.running_mean_h,
                                                 bn.running_var_h, slots[s : s + 1], bn.training, bn.eps)
            hg = hg.squeeze(0)
            if bn.training:
                stats.append((mean_h, var_h))
        if b_hh is not None:
            hg = hg + b_hh
        x_r, x_z, x_n = xp[s].chunk(3, 1)
        h_r, h_z, h_n = hg.chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h_new = (1 - z) * n + z * h
        if zh is not None:
            h_new = zh[s] * h + (1 - zh[s]) * h_new
        if a is None:
            h, y = h_new, h_new
        else:
            keep = a.t()
            h = torch.where(keep, h_new, h)
            y = torch.where(keep, h_new, torch.zeros_like(h_new))
        ys.append(y)
    y = torch.stack(ys) if ys else xp.new_zeros(0, h0.shape[0], h0.shape[1])
    if cfg.reverse:
        y = reverse_sequences(y, lengths)
    batch_stats = None
    if stats:
        batch_stats = BatchStats(torch.cat([m for m, _ in stats]), torch.cat([v for _, v in stats]), None, None)
    return RecurrenceResult(y.to(out_dtype), h.to(out_dtype), None, batch_stats)


BACKEND = ReferenceBackend()


def recurrence(xp, h0, c0, w_hh, w_hr=None, mask=None, lengths=None, reverse=False, norm=None,
               zoneout=None) -> RecurrenceResult:
    """The reference recurrence on the contract's arguments (its Config built from them)."""
    cfg = Config.of(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, norm, zoneout)
    return BACKEND.recurrence(cfg, xp, h0, c0, w_hh, w_hr, mask, lengths, norm, zoneout)
