"""The layer op: one LSTM layer, one direction, a whole sequence.

    xp = BN_x(x @ W_ih^T) + b_ih + b_hh     one GEMM over all steps (here, shared code)
    y, h_n, c_n = recurrence(xp, ...)       the backend's fused kernel (backends/)

and the running-statistics update of recurrent batch norm, which every backend shares.

Dimension letters: T steps, B batch, I input, H hidden, P projection, R = P or H, G = 4H.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backends.base import (
    Config,
    RecurrentBN,
    active_rows,
    batch_norm_steps,
    device_arch,
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


# ---- argument checks ---------------------------------------------------------------------


def check_recurrence_args(xp: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor,
                          weight_hr: Optional[Tensor], mask: Optional[Tensor],
                          lengths: Optional[Tensor]) -> None:
    """The contract's shape, dtype and device rules, checked before any backend runs, so
    that every backend refuses bad arguments the same way (ValueError naming the argument;
    TypeError for a dtype; RuntimeError for a device, as torch does)."""
    for name, t in (("xp", xp), ("h0", h0), ("c0", c0), ("weight_hh", weight_hh)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if xp.dim() != 3:
        raise ValueError(f"xp must be [T, B, 4H] (3-D), got shape {tuple(xp.shape)}")
    if not xp.is_floating_point():
        raise TypeError(f"xp must be a floating-point tensor, got {xp.dtype}")
    T, B, G = xp.shape
    if G % 4:
        raise ValueError(f"xp must have 4H gate columns (a multiple of 4), got {G}")
    H = G // 4
    if weight_hh.dim() != 2 or weight_hh.shape[0] != G:
        raise ValueError(f"weight_hh must be [4H, R] = [{G}, R], got shape {tuple(weight_hh.shape)}")
    R = weight_hh.shape[1]
    if weight_hr is None:
        if R != H:
            raise ValueError(f"weight_hh must be [4H, H] = [{G}, {H}] without weight_hr, got shape "
                             f"{tuple(weight_hh.shape)}")
    elif tuple(weight_hr.shape) != (R, H):
        raise ValueError(f"weight_hr must be [R, H] = [{R}, {H}], got shape {tuple(weight_hr.shape)}")
    if tuple(h0.shape) != (B, R):
        raise ValueError(f"h0 must be [B, R] = [{B}, {R}], got shape {tuple(h0.shape)}")
    if tuple(c0.shape) != (B, H):
        raise ValueError(f"c0 must be [B, H] = [{B}, {H}], got shape {tuple(c0.shape)}")
    if mask is not None and tuple(mask.shape) not in ((B, R), (T, B, R)):
        raise ValueError(f"mask must be [B, R] = [{B}, {R}] (shared) or [T, B, R] = [{T}, {B}, {R}] "
                         f"(per step), got shape {tuple(mask.shape)}")
    tensors = [("h0", h0), ("c0", c0), ("weight_hh", weight_hh), ("weight_hr", weight_hr), ("mask", mask)]
    for name, t in tensors:
        if t is not None and t.dtype != xp.dtype:
            raise TypeError(f"{name} must have the dtype of xp ({xp.dtype}), got {t.dtype}")
        if t is not None and t.device != xp.device:
            raise RuntimeError(f"{name} must be on the device of xp ({xp.device}), got {t.device}")
    if lengths is not None:
        if lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,):
            raise ValueError(f"lengths must be an int64 tensor of shape [B] = [{B}], got "
                             f"{lengths.dtype} of shape {tuple(lengths.shape)}")
        # Values: checked here where that costs no device sync (the compiled kernels check
        # their own copy on the host as well).
        if lengths.device.type == "cpu" and B > 0 and not torch.compiler.is_compiling():
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 0 or hi > T:
                raise ValueError(f"lengths must lie in [0, T = {T}], got values in [{lo}, {hi}]")


# ---- autocast ------------------------------------------------------------------------------


def autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The autocast dtype that applies to x (a float32 / low-precision tensor on a device
    with autocast enabled), else None.  float64 is never autocast (as in torch)."""
    dev = x.device.type
    if dev not in _AUTOCAST_DEVICES or x.dtype == torch.float64 or not x.is_floating_point():
        return None
    if not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "mtia")


def recurrence_dtype(backend: str, cfg: Config, op: str = "recurrence") -> torch.dtype:
    """Under autocast (cfg.dtype the autocast dtype), the dtype the recurrence runs in: the
    autocast dtype where a fused kernel serves it (CUDA / Triton: 16-bit data, fp32 cell
    state and accumulation), else float32 (the CPU kernels take fp32 / fp64; the reference
    computes in fp32 anyway)."""
    for name, why in dispatch.explain_config(backend, cfg, op):
        if why is None:
            return cfg.dtype if name != "reference" else torch.float32
    return torch.float32


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def _autocast_layer(dt, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, mask,
                    lengths, reverse, bn, backend):
    """lstm_layer under autocast: the input GEMM in the autocast dtype dt (as autocast runs
    F.linear), the recurrence in :func:`recurrence_dtype`, y and h_n returned in dt (as
    nn.LSTM under autocast) and c_n in float32: the cell state is never rounded to 16 bits."""
    T, B = x.shape[0], x.shape[1]
    R = weight_hh.shape[1]
    cfg = Config(device_type=x.device.type, dtype=dt, T=T, B=B, H=weight_hh.shape[0] // 4, R=R,
                 proj=weight_hr is not None,
                 mask=None if mask is None else ("shared" if mask.dim() == 2 else "per_step"),
                 lengths=lengths is not None, reverse=bool(reverse),
                 bn=None if bn is None else ("train" if bn.training else "eval"),
                 requires_grad=torch.is_grad_enabled(), arch=device_arch(x.device))
    with torch.autocast(x.device.type, enabled=False):
        rd = recurrence_dtype(backend, cfg)
        bias = None
        if bias_ih is not None:
            bias = bias_ih if bias_hh is None else bias_ih + bias_hh
        if bn is None:
            xp = F.linear(x.to(dt), weight_ih.to(dt), _cast(bias, dt)).to(rd)
        else:
            bn = dataclasses.replace(bn, weight_x=bn.weight_x.to(rd), weight_h=bn.weight_h.to(rd),
                                     weight_c=bn.weight_c.to(rd), bias_c=bn.bias_c.to(rd))
            xw = F.linear(x.to(dt), weight_ih.to(dt)).to(rd)
            xp = _normalize_projection(xw, _cast(bias, rd), lengths, reverse, bn)
        y, h_n, c_n = lstm_recurrence(xp, h0.to(rd), c0.to(rd), weight_hh.to(rd), _cast(weight_hr, rd),
                                      mask=_cast(mask, rd), lengths=lengths, reverse=reverse, bn=bn,
                                      backend=backend)
    return y.to(dt), h_n.to(dt), c_n.to(torch.float32)


# ---- the op ----------------------------------------------------------------------------------


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
    return _normalize_projection(F.linear(x, weight_ih), bias, lengths, reverse, bn)


def _normalize_projection(xw: Tensor, bias: Optional[Tensor], lengths: Optional[Tensor],
                          reverse: bool, bn: RecurrentBN) -> Tensor:
    """BN_x(xw) + bias for xw = x @ W_ih^T [T, B, G]; updates BN_x's running statistics."""
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
    if lengths is not None and isinstance(lengths, Tensor) and lengths.device != xp.device:
        lengths = lengths.to(xp.device)
    check_recurrence_args(xp, h0, c0, weight_hh, weight_hr, mask, lengths)
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

    Under torch.autocast the input GEMM runs in the autocast dtype, the recurrence in that
    dtype where a fused kernel serves it (else float32), y and h_n come back in the
    autocast dtype and c_n in float32 (see :func:`_autocast_layer`).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must be [T, B, I] (3-D), got shape {tuple(x.shape)}")
    if weight_ih.dim() != 2 or weight_ih.shape[1] != x.shape[2]:
        raise ValueError(f"weight_ih must be [4H, I] with I = {x.shape[2]} (the last dim of x), "
                         f"got shape {tuple(weight_ih.shape)}")
    dt = autocast_dtype(x)
    if dt is not None:
        return _autocast_layer(dt, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, mask,
                               lengths, reverse, bn, backend)
    xp = input_projection(x, weight_ih, bias_ih, bias_hh, lengths=lengths, reverse=reverse, bn=bn)
    return lstm_recurrence(xp, h0, c0, weight_hh, weight_hr, mask=mask, lengths=lengths,
                           reverse=reverse, bn=bn, backend=backend)
