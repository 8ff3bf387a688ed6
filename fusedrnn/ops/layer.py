"""The layer op: one LSTM layer, one direction, a whole sequence.

    xp = BN_x(x @ W_ih^T) + b_ih + b_hh     one GEMM over all steps, the backend's input norm
    y, h_n, c_n = recurrence(xp, ...)       the backend's fused recurrence (backends/)

and the running-statistics update of recurrent batch norm, which every backend shares.
The op is decided once (:mod:`.decision`: the backend and the compute dtype; a module passes
its own decision) and calls only that backend.  It builds its :class:`Config` once.

Dimension letters: T steps, B batch, I input, H hidden, P projection, R = P or H, G = 4H.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.contract import (Backend, CellKind, Config, MaskMode, Norm, NormMode, RecurrentBN, RecurrentLN,
                             Zoneout, needs_grad, step_counts)
from .decision import Decision, decide_op


@torch.no_grad()
def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    counts: Union[Tensor, int],
    step_offset: int,
    momentum: float,
) -> None:
    """Fold per-step batch statistics (mean, biased var [T, F]) into running statistics [S, F].

    Step s updates slot step_offset + s when that slot exists (< S); steps beyond the last
    slot do not update it.  The running variance takes the unbiased batch variance
    (n / (n - 1)); a step with a single active row does not update its slot.  counts: the
    active rows of each step [T], or one int when every step had the same (no lengths): then
    the update is two in-place ops per statistic instead of a masked blend.
    """
    S, T = running_mean.shape[0], mean.shape[0]
    k0, k1 = step_offset, min(step_offset + T, S)
    if k1 <= k0:
        return
    n = k1 - k0
    rm, rv = running_mean[k0:k1], running_var[k0:k1]
    if isinstance(counts, int):
        if counts > 1:
            rm.mul_(1 - momentum).add_(mean[:n].to(rm.dtype), alpha=momentum)
            rv.mul_(1 - momentum).add_(var[:n].to(rv.dtype), alpha=momentum * counts / (counts - 1))
        return
    cnt = counts[:n].to(mean.dtype).unsqueeze(1)
    upd = cnt > 1
    unbiased = var[:n] * cnt / (cnt - 1).clamp(min=1)
    rm.copy_(torch.where(upd, (1 - momentum) * rm + momentum * mean[:n].to(rm.dtype), rm))
    rv.copy_(torch.where(upd, (1 - momentum) * rv + momentum * unbiased.to(rv.dtype), rv))


def _counts(T: int, B: int, lengths: Optional[Tensor], device) -> Union[Tensor, int]:
    """The counts argument of :func:`update_running_stats`: B rows at every step without lengths."""
    return B if lengths is None else step_counts(T, B, lengths, device)


# ---- argument checks ---------------------------------------------------------------------


def check_recurrence_args(xp: Tensor, h0: Tensor, c0: Optional[Tensor], weight_hh: Tensor,
                          weight_hr: Optional[Tensor], mask: Optional[Tensor],
                          lengths: Optional[Tensor], zoneout: Optional[Zoneout] = None,
                          cell: CellKind = CellKind.LSTM, b_hh: Optional[Tensor] = None) -> None:
    """The contract's shape, dtype and device rules, checked before any backend runs, so
    that every backend refuses bad arguments the same way (ValueError naming the argument;
    TypeError for a dtype; RuntimeError for a device, as torch does).  A GRU (``cell``) has
    no c0 and no weight_hr, 3H gate columns, and its b_hh [3H] in the recurrence."""
    k = CellKind(cell).gates
    gru = cell == CellKind.GRU
    named = (("xp", xp), ("h0", h0), ("weight_hh", weight_hh)) + ((("c0", c0),) if not gru else ())
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if xp.dim() != 3:
        raise ValueError(f"xp must be [T, B, {k}H] (3-D), got shape {tuple(xp.shape)}")
    if not xp.is_floating_point():
        raise TypeError(f"xp must be a floating-point tensor, got {xp.dtype}")
    T, B, G = xp.shape
    if G % k:
        raise ValueError(f"xp must have {k}H gate columns (a multiple of {k}), got {G}")
    H = G // k
    if weight_hh.dim() != 2 or weight_hh.shape[0] != G:
        raise ValueError(f"weight_hh must be [{k}H, R] = [{G}, R], got shape {tuple(weight_hh.shape)}")
    R = weight_hh.shape[1]
    if weight_hr is None:
        if R != H:
            raise ValueError(f"weight_hh must be [{k}H, H] = [{G}, {H}] without weight_hr, got shape "
                             f"{tuple(weight_hh.shape)}")
    elif gru:
        raise ValueError("a GRU has no projection (weight_hr must be None)")
    elif tuple(weight_hr.shape) != (R, H):
        raise ValueError(f"weight_hr must be [R, H] = [{R}, {H}], got shape {tuple(weight_hr.shape)}")
    if tuple(h0.shape) != (B, R):
        raise ValueError(f"h0 must be [B, R] = [{B}, {R}], got shape {tuple(h0.shape)}")
    if gru:
        if c0 is not None:
            raise ValueError("a GRU has no cell state (c0 must be None)")
        if b_hh is not None and tuple(b_hh.shape) != (G,):
            raise ValueError(f"b_hh must be [3H] = [{G}], got shape {tuple(b_hh.shape)}")
    elif tuple(c0.shape) != (B, H):
        raise ValueError(f"c0 must be [B, H] = [{B}, {H}], got shape {tuple(c0.shape)}")
    if mask is not None and tuple(mask.shape) not in ((B, R), (T, B, R)):
        raise ValueError(f"mask must be [B, R] = [{B}, {R}] (shared) or [T, B, R] = [{T}, {B}, {R}] "
                         f"(per step), got shape {tuple(mask.shape)}")
    tensors = [("h0", h0), ("c0", c0), ("weight_hh", weight_hh), ("weight_hr", weight_hr), ("mask", mask),
               ("b_hh", b_hh)]
    if zoneout is not None:
        want_c = None if gru else (T, B, H)
        got_c = None if zoneout.c is None else tuple(zoneout.c.shape)
        if got_c != want_c or tuple(zoneout.h.shape) != (T, B, R):
            raise ValueError(f"zoneout weights must be c {'None' if gru else f'[T, B, H] = [{T}, {B}, {H}]'} and "
                             f"h [T, B, R] = [{T}, {B}, {R}], got {got_c} and {tuple(zoneout.h.shape)}")
        tensors += [("zoneout.c", zoneout.c), ("zoneout.h", zoneout.h)]
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


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def _bias(bias_ih: Optional[Tensor], bias_hh: Optional[Tensor]) -> Optional[Tensor]:
    if bias_ih is None:
        return None
    return bias_ih if bias_hh is None else bias_ih + bias_hh


# ---- the op ----------------------------------------------------------------------------------


def input_projection(d: Decision, cfg: Config, x: Tensor, weight_ih: Tensor, bias: Optional[Tensor],
                     lengths: Optional[Tensor], norm: Optional[Norm]) -> Tensor:
    """xp [T, B, G] = N_x(x @ W_ih^T) + bias for x [T, B, I], as one GEMM and the decided
    backend's input norm (cfg: the recurrence's configuration, in the dtype it runs in).

    Batch norm: statistics per step s of the recurrence, over the rows active at s (the
    row's reversed position in the reverse direction); updates BN_x's running statistics in
    training.  Layer norm: each row normalised over its G columns (no statistics kept).
    Under autocast the GEMM runs in the autocast dtype and xp comes out in cfg.dtype."""
    dt, rd = d.autocast, cfg.dtype
    if norm is None:
        if dt is None:
            return d.backend.project(cfg, x, weight_ih, bias)
        return F.linear(x.to(dt), weight_ih.to(dt), _cast(bias, dt)).to(rd)
    xw = d.backend.project(cfg, x, weight_ih, None) if dt is None else F.linear(x.to(dt), weight_ih.to(dt)).to(rd)
    if isinstance(norm, RecurrentLN):  # the bias folded into LN_x's (one pass over [T, B, G] fewer)
        shift = norm.bias_x.to(xw.dtype) if bias is None else norm.bias_x.to(xw.dtype) + bias.to(xw.dtype)
        return F.layer_norm(xw, (xw.shape[2],), norm.weight_x.to(xw.dtype), shift, norm.eps)
    T, B = xw.shape[0], xw.shape[1]
    xp, mean, var = d.backend.input_norm(cfg, xw, _cast(bias, rd), lengths, norm, norm.slot_index(T, xw.device))
    if norm.training:
        update_running_stats(norm.running_mean_x, norm.running_var_x, mean, var, _counts(T, B, lengths, xw.device),
                             norm.step_offset, norm.momentum)
    return xp


def run_recurrence(backend: Backend, cfg: Config, xp: Tensor, h0: Tensor, c0: Optional[Tensor], weight_hh: Tensor,
                   weight_hr: Optional[Tensor], mask: Optional[Tensor], lengths: Optional[Tensor],
                   norm: Optional[Norm], zoneout: Optional[Zoneout] = None,
                   b_hh: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """The backend's recurrence, then the running-statistics update of BN_h (and BN_c)."""
    if cfg.cell == CellKind.GRU:
        res = backend.recurrence(cfg, xp, h0, None, weight_hh, None, mask, lengths, norm, zoneout, b_hh)
    else:
        res = backend.recurrence(cfg, xp, h0, c0, weight_hh, weight_hr, mask, lengths, norm, zoneout)
    if isinstance(norm, RecurrentBN) and norm.training and res.stats is not None:
        counts = _counts(cfg.T, cfg.B, lengths, xp.device)
        st = res.stats
        update_running_stats(norm.running_mean_h, norm.running_var_h, st.mean_h, st.var_h, counts,
                             norm.step_offset, norm.momentum)
        if st.mean_c is not None:
            update_running_stats(norm.running_mean_c, norm.running_var_c, st.mean_c, st.var_c, counts,
                                 norm.step_offset, norm.momentum)
    return res.y, res.h_n, res.c_n


def _gru_b_hh(bias_hh: Optional[Tensor], norm: Optional[Norm]) -> Optional[Tensor]:
    """The GRU's b_hh as the recurrence takes it: LN_h's bias folded in (both are added to
    N_h(W_hh h) before the reset product)."""
    if isinstance(norm, RecurrentLN):
        return norm.bias_h if bias_hh is None else bias_hh + norm.bias_h
    return bias_hh


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
    norm: Optional[Norm] = None,
    zoneout: Optional[Zoneout] = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """The LSTM recurrence op (see :mod:`fusedrnn.core.contract` for the exact semantics).

    Args:
        xp: [T, B, G] input projection, biases (and N_x) included, in time order.
        h0: [B, R] and c0: [B, H] initial state.
        weight_hh: [G, R]; weight_hr: [P, H] or None.
        mask: recurrent dropout mask on h_{s-1} where it enters W_hh, already scaled by
            1 / (1 - p): [B, R] shared by every step, or [T, B, R] one per step.
        lengths: [B] int64 sequence lengths (variable-length batches), or None.
        reverse: run each sequence backwards (the reverse direction).
        norm: recurrent batch norm (:class:`RecurrentBN`; the running statistics of BN_h and
            BN_c are updated here in training mode), layer norm (:class:`RecurrentLN`), or None.
        zoneout: the zoneout weights of the previous state, c [T, B, H] and h [T, B, R]
            (:func:`fusedrnn.ops.zoneout_weights`), or None.
        backend: "auto" or a backend name.

    Returns:
        y [T, B, R] (zeros past each row's length), h_n [B, R], c_n [B, H].
    """
    if lengths is not None and isinstance(lengths, Tensor) and lengths.device != xp.device:
        lengths = lengths.to(xp.device)
    check_recurrence_args(xp, h0, c0, weight_hh, weight_hr, mask, lengths, zoneout)
    cfg = Config.of(xp, h0, c0, weight_hh, weight_hr, mask, lengths, reverse, norm, zoneout)
    return run_recurrence(decide_op(backend, cfg).backend, cfg, xp, h0, c0, weight_hh, weight_hr, mask, lengths,
                          norm, zoneout)


def gru_recurrence(
    xp: Tensor,
    h0: Tensor,
    weight_hh: Tensor,
    bias_hh: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
    norm: Optional[Norm] = None,
    zoneout: Optional[Zoneout] = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The GRU recurrence op (:mod:`fusedrnn.core.contract`): xp [T, B, 3H] = N_x(x W_ih^T) +
    b_ih in time order, h0 [B, H], weight_hh [3H, H], bias_hh [3H] (inside the reset product
    for the n block, as torch); mask, lengths, reverse, norm (no c parts) and zoneout (c None,
    h [T, B, H]) as :func:`lstm_recurrence`.  Returns y [T, B, H], h_n [B, H]."""
    if lengths is not None and isinstance(lengths, Tensor) and lengths.device != xp.device:
        lengths = lengths.to(xp.device)
    b_hh = _gru_b_hh(bias_hh, norm)
    check_recurrence_args(xp, h0, None, weight_hh, None, mask, lengths, zoneout, CellKind.GRU, b_hh)
    cfg = Config.of(xp, h0, None, weight_hh, None, mask, lengths, reverse, norm, zoneout, CellKind.GRU, b_hh)
    y, h_n, _ = run_recurrence(decide_op(backend, cfg).backend, cfg, xp, h0, None, weight_hh, None, mask, lengths,
                               norm, zoneout, b_hh)
    return y, h_n


def _layer(cell: CellKind, x: Tensor, h0: Tensor, c0: Optional[Tensor], weight_ih: Tensor, weight_hh: Tensor,
           bias_ih: Optional[Tensor], bias_hh: Optional[Tensor], weight_hr: Optional[Tensor],
           mask: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, norm: Optional[Norm],
           zoneout: Optional[Zoneout], backend: Union[str, Decision]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer of either cell (:func:`lstm_layer`, :func:`gru_layer`): one Config, the input
    projection, the recurrence, under autocast in the decided dtype."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must be [T, B, I] (3-D), got shape {tuple(x.shape)}")
    k = cell.gates
    if weight_ih.dim() != 2 or weight_ih.shape[1] != x.shape[2]:
        raise ValueError(f"weight_ih must be [{k}H, I] with I = {x.shape[2]} (the last dim of x), "
                         f"got shape {tuple(weight_ih.shape)}")
    if lengths is not None and isinstance(lengths, Tensor) and lengths.device != x.device:
        lengths = lengths.to(x.device)
    decided = backend if isinstance(backend, Decision) else None
    dt = decided.autocast if decided is not None else autocast_dtype(x)
    T, B = x.shape[0], x.shape[1]
    gru = cell == CellKind.GRU
    cfg = Config.build(x.device, dt or x.dtype, T, B, weight_hh.shape[0] // k, weight_hh.shape[1],
                       proj=weight_hr is not None, mask=MaskMode.of(mask), lengths=lengths is not None,
                       reverse=reverse, norm=NormMode.of(norm), zoneout=zoneout is not None, cell=cell,
                       requires_grad=needs_grad((x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr), norm))
    d = decided if decided is not None else decide_op(backend, cfg, autocast=dt)
    # the LSTM's biases both go into xp; the GRU's b_hh stays in the recurrence (b_hn is inside r *)
    bias = bias_ih if gru else _bias(bias_ih, bias_hh)
    b_hh = _gru_b_hh(bias_hh, norm) if gru else None
    if d.autocast is None:
        xp = input_projection(d, cfg, x, weight_ih, bias, lengths, norm)
        check_recurrence_args(xp, h0, c0, weight_hh, weight_hr, mask, lengths, zoneout, cell, b_hh)
        return run_recurrence(d.backend, cfg, xp, h0, c0, weight_hh, weight_hr, mask, lengths, norm, zoneout, b_hh)
    rd = d.dtype
    if rd != cfg.dtype:
        cfg = dataclasses.replace(cfg, dtype=rd)
    with torch.autocast(x.device.type, enabled=False):
        if norm is not None:  # every parameter of the norm in the recurrence's dtype
            norm = dataclasses.replace(norm, **{f.name: getattr(norm, f.name).to(rd) for f in dataclasses.fields(norm)
                                                if f.name.startswith(("weight_", "bias_"))
                                                and getattr(norm, f.name) is not None})
        if zoneout is not None:
            zoneout = Zoneout(_cast(zoneout.c, rd), zoneout.h.to(rd))
        xp = input_projection(d, cfg, x, weight_ih, bias, lengths, norm)
        args = (xp, h0.to(rd), _cast(c0, rd), weight_hh.to(rd), _cast(weight_hr, rd), _cast(mask, rd), lengths)
        b_hh = _cast(b_hh, rd)
        check_recurrence_args(*args, zoneout, cell, b_hh)
        y, h_n, c_n = run_recurrence(d.backend, cfg, *args, norm, zoneout, b_hh)
    return y.to(dt), h_n.to(dt), (None if c_n is None else c_n.to(torch.float32))


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
    norm: Optional[Norm] = None,
    zoneout: Optional[Zoneout] = None,
    backend: Union[str, Decision] = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction over a whole sequence.

    Args:
        x: [T, B, I] input, time-major.
        h0: [B, R]; c0: [B, H].
        weight_ih: [G, I]; weight_hh: [G, R]; bias_ih, bias_hh: [G] or None;
        weight_hr: [P, H] or None.
        mask, lengths, reverse, norm, zoneout: as :func:`lstm_recurrence` (with a norm, N_x
            normalises the input projection: BN_x or LN_x).
        backend: "auto", a backend name, or the :class:`~fusedrnn.ops.decision.Decision` a
            module made for this call (no second decision).

    Returns:
        y [T, B, R], h_n [B, R], c_n [B, H].

    Under torch.autocast the input GEMM runs in the autocast dtype, the recurrence in that
    dtype where the backend keeps its cell state in float32 (else float32), y and h_n come
    back in the autocast dtype and c_n in float32: the cell state is never rounded to 16 bits.
    """
    return _layer(CellKind.LSTM, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, mask, lengths,
                  reverse, norm, zoneout, backend)


def gru_layer(
    x: Tensor,
    h0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
    norm: Optional[Norm] = None,
    zoneout: Optional[Zoneout] = None,
    backend: Union[str, Decision] = "auto",
) -> tuple[Tensor, Tensor]:
    """One GRU layer in one direction over a whole sequence (torch's gates r, z, n).

    Args:
        x: [T, B, I] input, time-major; h0: [B, H].
        weight_ih: [3H, I]; weight_hh: [3H, H]; bias_ih, bias_hh: [3H] or None.
        mask, lengths, reverse, norm, zoneout: as :func:`gru_recurrence` (with a norm, N_x
            normalises the input projection: BN_x or LN_x, b_ih added after).
        backend: "auto", a backend name, or a module's Decision.

    Returns:
        y [T, B, H], h_n [B, H] (under autocast in the autocast dtype).
    """
    y, h_n, _ = _layer(CellKind.GRU, x, h0, None, weight_ih, weight_hh, bias_ih, bias_hh, None, mask, lengths,
                       reverse, norm, zoneout, backend)
    return y, h_n
