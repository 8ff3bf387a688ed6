"""``fusedrnn::gru_layer_forward`` / ``_backward``: fake kernels and autograd (the schema is
:mod:`fusedrnn.core.schema`'s GRU_SCHEMA; csrc/module.cpp defines it, csrc/cpu/gru_layer.cpp
implements it; no CUDA kernel yet).

Workspace of this family (saved when save_workspace): ws_h [T, B, H] the masked h entering
W_hh (data dtype), ws_gates [T, B, 3H] the activated r, z, n, ws_hs [T + 1, B, H] the states
with h0 first, ws_hh_hat [T, B, 3H] N_h's x_hat (norms), ws_hn [T, B, H] the reset product's
operand.  Without save_workspace: one step of each, and ws_hs two (a ring).  In the recompute
mode (save_workspace SAVE_RECOMPUTE_NORM) ws_hh_hat is empty, rebuilt by the backward.
"""

from __future__ import annotations

import torch

from ...core import schema
from .layer import save_mode

FORWARD, BACKWARD = "fusedrnn::gru_layer_forward", "fusedrnn::gru_layer_backward"


def _workspace(new, T, B, H, save, norm):
    TW = T if save else 1
    return (new(TW, B, H, acc_type=False), new(TW, B, 3 * H), new(T + 1 if save else 2, B, H),
            new(TW if norm and save != schema.SAVE_RECOMPUTE_NORM else 0, B, 3 * H), new(TW, B, H))


torch.library.register_fake(FORWARD)(lambda xp, h0, *params: schema.fake_gru_forward(xp, params, _workspace))
schema.register_layer_autograd(FORWARD, BACKWARD, schema.GRU_SCHEMA)


def forward(cfg, xp, h0, w_hh, b_hh, mask, lengths, norm, zoneout=None):
    """The contract's GRU recurrence on fusedrnn::gru_layer_forward."""
    return schema.run_gru_forward(torch.ops.fusedrnn.gru_layer_forward, cfg, xp, h0, w_hh, b_hh, mask, lengths, norm,
                                  zoneout, save_mode(cfg, norm))
