"""The cell op: one LSTM step, as decoders, attention and NTM controllers use it.

Dimension letters: B batch, I input, H hidden, G = 4H gates (i, f, g, o).
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from ..backends.base import Config, RecurrentBN
from . import dispatch
from .layer import lstm_layer


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
    bn: Optional[RecurrentBN] = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """One LSTM step.

    Args:
        input: [B, I]; hx, cx: [B, H].
        weight_ih: [G, I]; weight_hh: [G, H]; bias_ih, bias_hh: [G] or None.
        mask: [B, H] recurrent dropout mask on hx (scaled by 1 / (1 - p)), or None.
        bn: recurrent batch norm, with ``bn.step_offset`` the step index of this step
            (selects the running-statistics slot), or None.
        backend: "auto" or a backend name.

    Returns:
        hy [B, H], cy [B, H].

    Without batch norm: the two projections are GEMMs, then one fused pointwise kernel
    (gates, cell update, output).  With batch norm the step is the layer op with T = 1.
    """
    if bn is not None:
        _, hy, cy = lstm_layer(input.unsqueeze(0), hx, cx, weight_ih, weight_hh, bias_ih,
                               bias_hh, mask=mask, bn=bn, backend=backend)
        return hy, cy
    bias = None
    if bias_ih is not None:
        bias = bias_ih if bias_hh is None else bias_ih + bias_hh
    h_in = hx if mask is None else hx * mask
    gates = F.linear(input, weight_ih, bias) + F.linear(h_in, weight_hh)
    cfg = Config(device_type=input.device.type, dtype=input.dtype, T=1, B=input.shape[0],
                 H=cx.shape[1], R=hx.shape[1], proj=False,
                 mask=None if mask is None else "shared", lengths=False, reverse=False, bn=None,
                 requires_grad=gates.requires_grad)
    be = dispatch.resolve(backend, cfg, op="cell")
    return be.cell(gates, cx)
