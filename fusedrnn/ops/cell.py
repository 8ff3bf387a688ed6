"""The cell op: one LSTM step, as decoders, attention and NTM controllers use it.

Dimension letters: B batch, I input, H hidden, G = 4H gates (i, f, g, o).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.contract import Config, MaskMode, Norm, Zoneout
from .decision import Decision, decide_op
from .layer import autocast_dtype, gru_layer, lstm_layer


def check_cell_args(input: Tensor, hx: Tensor, cx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                    mask: Optional[Tensor], autocast: bool) -> None:
    """Shapes, dtypes and devices of the cell op (ValueError / TypeError / RuntimeError
    naming the argument)."""
    for name, t in (("input", input), ("hx", hx), ("cx", cx)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if input.dim() != 2:
        raise ValueError(f"input must be [B, I] (2-D), got shape {tuple(input.shape)}")
    B, G = input.shape[0], weight_hh.shape[0]
    H = G // 4
    if tuple(weight_ih.shape) != (G, input.shape[1]) or tuple(weight_hh.shape) != (G, H) or G % 4:
        raise ValueError(f"weight_ih must be [4H, I] and weight_hh [4H, H] for input [B, I] = "
                         f"{list(input.shape)}, got {list(weight_ih.shape)} and {list(weight_hh.shape)}")
    for name, t in (("hx", hx), ("cx", cx), ("mask", mask)):
        if t is None:
            continue
        if tuple(t.shape) != (B, H):
            raise ValueError(f"{name} must be [B, H] = [{B}, {H}], got shape {tuple(t.shape)}")
        if t.device != input.device:
            raise RuntimeError(f"{name} must be on the device of input ({input.device}), got {t.device}")
        if not autocast and t.dtype != input.dtype:
            raise TypeError(f"{name} must have the dtype of input ({input.dtype}), got {t.dtype}")


def lstm_cell(
    input: Tensor,
    hx: Tensor,
    cx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    norm: Optional[Norm] = None,
    zoneout: Optional[Zoneout] = None,
    backend: Union[str, Decision] = "auto",
) -> tuple[Tensor, Tensor]:
    """One LSTM step.

    Args:
        input: [B, I]; hx, cx: [B, H].
        weight_ih: [G, I]; weight_hh: [G, H]; bias_ih, bias_hh: [G] or None.
        mask: [B, H] recurrent dropout mask on hx (scaled by 1 / (1 - p)), or None.
        norm: recurrent batch norm, with ``norm.step_offset`` the step index of this step
            (selects the running-statistics slot), layer norm, or None.
        zoneout: zoneout weights of hx and cx for this step, c [B, H] and h [B, H] (0/1
            draws in training, the rates in eval), or None.
        backend: "auto", a backend name, or the Decision a module made for this call.

    Returns:
        hy [B, H], cy [B, H].

    Without a norm or zoneout: the two projections are GEMMs, then the backend's fused
    pointwise cell step (gates, cell update, output).  With batch norm, layer norm or zoneout
    the step is the layer op with T = 1.

    Under torch.autocast the GEMMs run in the autocast dtype and the pointwise cell math in
    float32 (a 16-bit c would be rounded at every step); hy comes back in the autocast dtype
    and cy in float32, so a decoder's cell state is never rounded to 16 bits between steps.
    """
    dt = backend.autocast if isinstance(backend, Decision) else autocast_dtype(input)
    check_cell_args(input, hx, cx, weight_ih, weight_hh, mask, dt is not None)
    if norm is not None or zoneout is not None:
        if zoneout is not None:
            zoneout = Zoneout(zoneout.c.unsqueeze(0), zoneout.h.unsqueeze(0))
        _, hy, cy = lstm_layer(input.unsqueeze(0), hx, cx, weight_ih, weight_hh, bias_ih,
                               bias_hh, mask=mask, norm=norm, zoneout=zoneout, backend=backend)
        return hy, cy
    bias = None
    if bias_ih is not None:
        bias = bias_ih if bias_hh is None else bias_ih + bias_hh
    h_in = hx if mask is None else hx * mask
    if isinstance(backend, Decision):
        be = backend.backend
    else:  # the pointwise step runs in float32 under autocast
        cfg = Config.build(input.device, torch.float32 if dt is not None else input.dtype, 1, input.shape[0],
                           cx.shape[1], hx.shape[1], mask=MaskMode.of(mask))
        be = decide_op(backend, cfg, op="cell").backend
    if dt is not None:
        with torch.autocast(input.device.type, enabled=False):
            rd = torch.float32
            gates = (F.linear(input.to(dt), weight_ih.to(dt), None if bias is None else bias.to(dt)).to(rd)
                     + F.linear(h_in.to(dt), weight_hh.to(dt)).to(rd))
            hy, cy = be.cell(gates, cx.to(rd))
        return hy.to(dt), cy.to(torch.float32)
    gates = F.linear(input, weight_ih, bias) + F.linear(h_in, weight_hh)
    return be.cell(gates, cx)


def gru_cell(
    input: Tensor,
    hx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    norm: Optional[Norm] = None,
    zoneout: Optional[Tensor] = None,
    backend: Union[str, Decision] = "auto",
) -> Tensor:
    """One GRU step (torch's gates r, z, n): the GRU layer op with T = 1.

    Args:
        input: [B, I]; hx: [B, H]; weight_ih: [3H, I]; weight_hh: [3H, H]; bias_ih, bias_hh:
            [3H] or None.
        mask: [B, H] recurrent dropout mask on hx (scaled by 1 / (1 - p)), or None.
        norm: batch norm (``norm.step_offset`` this step's index) or layer norm, or None.
        zoneout: [B, H] the zoneout weights of hx for this step, or None.
        backend: "auto", a backend name, or the Decision a module made for this call.

    Returns:
        hy [B, H] (in the autocast dtype under autocast).
    """
    for name, t in (("input", input), ("hx", hx)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if input.dim() != 2:
        raise ValueError(f"input must be [B, I] (2-D), got shape {tuple(input.shape)}")
    zo = None if zoneout is None else Zoneout(None, zoneout.unsqueeze(0))
    _, hy = gru_layer(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, bias_hh, mask=mask, norm=norm,
                      zoneout=zo, backend=backend)
    return hy
