"""The layer op: one LSTM layer, one direction, a whole sequence.

    xp = BN_x(x @ W_ih^T) + b_ih + b_hh     one GEMM over all steps (here, shared code)
    y, h_n, c_n = recurrence(xp, ...)       the backend's fused kernel (backends/)

and the running-statistics update of recurrent batch norm, which every backend shares.

Dimension letters: T steps, B batch, I input, H hidden, P projection, R = P or H, G = 4H.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backends.base import (
    Config,
    RecurrentBN,
    active_rows,
    batch_norm_steps,
    reverse_sequences,
    step_counts,
)
from ..backends import native
from . import dispatch


@torch.no_grad()
def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    counts: Tensor,
    step_offset: int,
    momentum: float,
) -> None:
    """Fold per-step batch statistics (mean, biased var [T, F]) into running statistics [S, F].

    Step s updates slot step_offset + s when that slot exists (< S); steps beyond the last
    slot do not update it.  The running variance takes the unbiased batch variance
    (n / (n - 1)); a step with a single active row does not update its slot.
    """
    S, T = running_mean.shape[0], mean.shape[0]
    k0, k1 = step_offset, min(step_offset + T, S)
    if k1 <= k0:
        return
    n = k1 - k0
    cnt = counts[:n].to(mean.dtype).unsqueeze(1)
    upd = cnt > 1
    unbiased = var[:n] * cnt / (cnt - 1).clamp(min=1)
    rm, rv = running_mean[k0:k1], running_var[k0:k1]
    rm.copy_(torch.where(upd, (1 - momentum) * rm + momentum * mean[:n].to(rm.dtype), rm))
    rv.copy_(torch.where(upd, (1 - momentum) * rv + momentum * unbiased.to(rv.dtype), rv))


def input_projection(
    x: Tensor,
    weight_ih: Tensor,
    bias_ih: Optional[Tensor],
    bias_hh: Optional[Tensor],
    *,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
    bn: Optional[RecurrentBN] = None,
) -> Tensor:
    """xp [T, B, G] = BN_x(x @ W_ih^T) + b_ih + b_hh for x [T, B, I], as one GEMM.

    BN_x statistics are per step s of the recurrence (the row's reversed position in the
    reverse direction), over the rows active at that step, computed for all steps at once.
    """
    bias = None
    if bias_ih is not None:
        bias = bias_ih if bias_hh is None else bias_ih + bias_hh
    if bn is None:
        return F.linear(x, weight_ih, bias)
    xw = F.linear(x, weight_ih)  # [T, B, G]
    T, B = xw.shape[0], xw.shape[1]
    slots = bn.slot_index(T, xw.device)
    if native.batch_norm_steps_available(xw):  # one fused pass, bias included
        xp, mean, var = native.batch_norm_steps(xw, bn.weight_x, bias, lengths, reverse, slots, bn)
    else:
        xs = reverse_sequences(xw, lengths) if reverse else xw  # processing order
        xs, mean, var = batch_norm_steps(
            xs, active_rows(T, lengths, xw.device), bn.weight_x, None, bn.running_mean_x,
            bn.running_var_x, slots, bn.training, bn.eps,
        )
        xp = reverse_sequences(xs, lengths) if reverse else xs
        xp = xp if bias is None else xp + bias
    if bn.training:
        update_running_stats(bn.running_mean_x, bn.running_var_x, mean, var,
                             step_counts(T, B, lengths, xw.device), bn.step_offset, bn.momentum)
    return xp


def lstm_recurrence(
    xp: Tensor,
    h0: Tensor,
    c0: Tensor,
    weight_hh: Tensor,
    weight_hr: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
    bn: Optional[RecurrentBN] = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """The recurrence op (see :mod:`fusedrnn.backends.base` for the exact semantics).

    Args:
        xp: [T, B, G] input projection, biases (and BN_x) included, in time order.
        h0: [B, R] and c0: [B, H] initial state.
        weight_hh: [G, R]; weight_hr: [P, H] or None.
        mask: recurrent dropout mask on h_{s-1} where it enters W_hh, already scaled by
            1 / (1 - p): [B, R] shared by every step, or [T, B, R] one per step.
        lengths: [B] int64 sequence lengths (variable-length batches), or None.
        reverse: run each sequence backwards (the reverse direction).
        bn: recurrent batch-norm parameters and state, or None.  Running statistics of
            BN_h and BN_c are updated here in training mode.
        backend: "auto" or a backend name.

    Returns:
        y [T, B, R] (zeros past each row's length), h_n [B, R], c_n [B, H].
    """
    cfg = Config.of(xp, h0, c0, weight_hh, weight_hr, mask, lengths, reverse, bn)
    be = dispatch.resolve(backend, cfg)
    res = be.recurrence(xp, h0, c0, weight_hh, weight_hr, mask, lengths, reverse, bn)
    if bn is not None and bn.training and res.stats is not None:
        counts = step_counts(cfg.T, cfg.B, lengths, xp.device)
        st = res.stats
        update_running_stats(bn.running_mean_h, bn.running_var_h, st.mean_h, st.var_h, counts,
                             bn.step_offset, bn.momentum)
        update_running_stats(bn.running_mean_c, bn.running_var_c, st.mean_c, st.var_c, counts,
                             bn.step_offset, bn.momentum)
    return res.y, res.h_n, res.c_n


def lstm_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    weight_hr: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
    bn: Optional[RecurrentBN] = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction over a whole sequence.

    Args:
        x: [T, B, I] input, time-major.
        h0: [B, R]; c0: [B, H].
        weight_ih: [G, I]; weight_hh: [G, R]; bias_ih, bias_hh: [G] or None;
        weight_hr: [P, H] or None.
        mask, lengths, reverse, bn, backend: as :func:`lstm_recurrence`.

    Returns:
        y [T, B, R], h_n [B, R], c_n [B, H].
    """
    xp = input_projection(x, weight_ih, bias_ih, bias_hh, lengths=lengths, reverse=reverse, bn=bn)
    return lstm_recurrence(xp, h0, c0, weight_hh, weight_hr, mask=mask, lengths=lengths,
                           reverse=reverse, bn=bn, backend=backend)
