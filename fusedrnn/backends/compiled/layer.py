"""``fusedrnn::lstm_layer_forward`` / ``_backward``: fake kernels and autograd (the schema is
:mod:`fusedrnn.core.schema`'s; csrc/module.cpp defines it, csrc/cpu/layer.cpp and
csrc/cuda/register.cpp implement it).

Workspace of this family (saved when save_workspace): ws_h [T, B, R] the masked h entering
W_hh (data dtype), ws_act [T, B, G] activated gates, ws_c [T + 1, B, H] cell states with c0
first, ws_hh_hat [T, B, G] normalised W_hh h (batch norm), ws_hc [T, B, H] h before W_hr
(data dtype, projection); statistics and the rest in the accumulation dtype.  Without
save_workspace: one step of each, and ws_c two (a ring).  In the recompute mode (a norm whose
``recompute`` is set, on the CPU: save_workspace SAVE_RECOMPUTE_NORM) ws_hh_hat is empty and
the backward rebuilds it per chunk of steps, one GEMM over the chunk's ws_h.
"""

from __future__ import annotations

import torch

from ...core import schema

FORWARD, BACKWARD = "fusedrnn::lstm_layer_forward", "fusedrnn::lstm_layer_backward"


def _workspace(new, T, B, H, R, save, norm, proj):
    TW = T if save else 1
    return (new(TW, B, R, acc_type=False), new(TW, B, 4 * H), new(T + 1 if save else 2, B, H),
            new(TW if norm and save != schema.SAVE_RECOMPUTE_NORM else 0, B, 4 * H),
            new(TW if proj else 0, B, H, acc_type=False))


torch.library.register_fake(FORWARD)(lambda xp, h0, c0, *params: schema.fake_forward(xp, params, _workspace))
schema.register_layer_autograd(FORWARD, BACKWARD)


def save_mode(cfg, norm) -> int:
    """The save_workspace of a call of this family's ops (LSTM and GRU): nothing without a
    backward, else the workspace, without N_h's x_hat where the norm asks for the recompute
    mode and the kernel is the CPU's (the one that has it)."""
    if not cfg.requires_grad:
        return schema.SAVE_NONE
    recompute = norm is not None and norm.recompute and cfg.device_type == "cpu"
    return schema.SAVE_RECOMPUTE_NORM if recompute else schema.SAVE_ALL


def forward(cfg, xp, h0, c0, w_hh, w_hr, mask, lengths, norm, zoneout=None):
    """The contract's recurrence on fusedrnn::lstm_layer_forward (the kernel of xp's device)."""
    return schema.run_layer_forward(torch.ops.fusedrnn.lstm_layer_forward, cfg, xp, h0, c0, w_hh, w_hr, mask,
                                    lengths, norm, zoneout, save_mode(cfg, norm))
