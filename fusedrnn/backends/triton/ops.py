"""The Triton layer ops, with the schema of every layer-op family (:mod:`fusedrnn.core.schema`):

  fusedrnn_triton::lstm_layer_forward  -> y, h_n, c_n, h_stats, c_stats, ws_h, ws_act, ws_c, ws_hh_hat, ws_hc
  fusedrnn_triton::lstm_layer_backward -> grad_xp, grad_h0, grad_c0, grad_w_hh, grad_w_hr, and the
                                          batch-norm parameter gradients
  fusedrnn_triton::gru_layer_forward   -> y, h_n, h_stats, ws_h, ws_gates, ws_hs, ws_hh_hat, ws_hn
  fusedrnn_triton::gru_layer_backward  -> grad_xp, grad_h0, grad_w_hh, grad_b_hh, grad_norm_h_weight

Registered with torch.library.triton_op, so torch.compile traces into the kernels; a plain
custom_op under the Triton interpreter, whose kernels cannot run on fake tensors.  The fake
kernels give this family's workspace shapes (:mod:`.host`); autograd is the schema's.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...core import schema
from ...core.contract import NormMode
from . import host
from .host import INTERPRET

FORWARD, BACKWARD = "fusedrnn_triton::lstm_layer_forward", "fusedrnn_triton::lstm_layer_backward"
_define = torch.library.custom_op if INTERPRET else torch.library.triton_op

_OUT10 = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_OUT8 = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@_define(FORWARD, mutates_args=())
def lstm_layer_forward(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                       mask: Optional[Tensor], mask_mode: int, lengths: Optional[Tensor], reverse: bool,
                       norm_mode: int, norm_h_weight: Optional[Tensor], norm_c_weight: Optional[Tensor],
                       norm_c_bias: Optional[Tensor], bn_h_running_mean: Optional[Tensor],
                       bn_h_running_var: Optional[Tensor], bn_c_running_mean: Optional[Tensor],
                       bn_c_running_var: Optional[Tensor], bn_step_offset: int, norm_eps: float,
                       zoneout_c: Optional[Tensor], zoneout_h: Optional[Tensor], save_workspace: int) -> _OUT10:
    with host.device_guard(xp):
        return host.forward(xp, h0, c0, w_hh, w_hr, mask, mask_mode, lengths, reverse, norm_mode, norm_h_weight,
                            norm_c_weight, norm_c_bias, bn_h_running_mean, bn_h_running_var, bn_c_running_mean,
                            bn_c_running_var, bn_step_offset, norm_eps, zoneout_c, zoneout_h, save_workspace)


@_define(BACKWARD, mutates_args=())
def lstm_layer_backward(grad_y: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                        mask: Optional[Tensor], mask_mode: int, lengths: Optional[Tensor], reverse: bool,
                        norm_mode: int, norm_h_weight: Optional[Tensor], norm_c_weight: Optional[Tensor],
                        norm_c_bias: Optional[Tensor], bn_h_running_mean: Optional[Tensor],
                        bn_h_running_var: Optional[Tensor], bn_c_running_mean: Optional[Tensor],
                        bn_c_running_var: Optional[Tensor], bn_step_offset: int, norm_eps: float,
                        zoneout_c: Optional[Tensor], zoneout_h: Optional[Tensor], h_stats: Tensor,
                        c_stats: Tensor, ws_h: Tensor, ws_act: Tensor, ws_c: Tensor, ws_hh_hat: Tensor,
                        ws_hc: Tensor) -> _OUT8:
    with host.device_guard(grad_y):
        return host.backward(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, mask, mask_mode, lengths, reverse, norm_mode,
                             norm_h_weight, norm_c_weight, norm_c_bias, bn_h_running_mean, bn_h_running_var,
                             bn_c_running_mean, bn_c_running_var, bn_step_offset, norm_eps, zoneout_c, zoneout_h,
                             h_stats, c_stats, ws_h, ws_act, ws_c, ws_hh_hat, ws_hc)


def _workspace(new, T, B, H, R, save, norm, proj):
    if not save:
        return new(0), new(0), new(0), new(0), new(1, B, H) if proj else new(0)
    return new(T, B, R, acc_type=False), new(T, B, 4 * H), new(T + 1, B, H), new(T, B, 4 * H) if norm else new(0), \
        new(max(T, 1), B, H) if proj else new(0)


lstm_layer_forward.register_fake(lambda xp, h0, c0, *params: schema.fake_forward(xp, params, _workspace))
schema.register_layer_autograd(FORWARD, BACKWARD)

GRU_FORWARD, GRU_BACKWARD = "fusedrnn_triton::gru_layer_forward", "fusedrnn_triton::gru_layer_backward"
_OUT5 = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


@_define(GRU_FORWARD, mutates_args=())
def gru_layer_forward(xp: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], mask: Optional[Tensor],
                      mask_mode: int, lengths: Optional[Tensor], reverse: bool, norm_mode: int,
                      norm_h_weight: Optional[Tensor], bn_h_running_mean: Optional[Tensor],
                      bn_h_running_var: Optional[Tensor], bn_step_offset: int, norm_eps: float,
                      zoneout_h: Optional[Tensor], save_workspace: int) -> _OUT8:
    with host.device_guard(xp):
        return host.gru_forward(xp, h0, w_hh, b_hh, mask, mask_mode, lengths, reverse, norm_mode, norm_h_weight,
                                bn_h_running_mean, bn_h_running_var, bn_step_offset, norm_eps, zoneout_h,
                                save_workspace)


@_define(GRU_BACKWARD, mutates_args=())
def gru_layer_backward(grad_y: Tensor, grad_h_n: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                       mask: Optional[Tensor], mask_mode: int, lengths: Optional[Tensor], reverse: bool,
                       norm_mode: int, norm_h_weight: Optional[Tensor], bn_h_running_mean: Optional[Tensor],
                       bn_h_running_var: Optional[Tensor], bn_step_offset: int, norm_eps: float,
                       zoneout_h: Optional[Tensor], h_stats: Tensor, ws_h: Tensor, ws_gates: Tensor, ws_hs: Tensor,
                       ws_hh_hat: Tensor, ws_hn: Tensor) -> _OUT5:
    with host.device_guard(grad_y):
        return host.gru_backward(grad_y, grad_h_n, w_hh, b_hh, mask, mask_mode, lengths, reverse, norm_mode,
                                 norm_h_weight, bn_h_running_mean, bn_h_running_var, bn_step_offset, norm_eps,
                                 zoneout_h, h_stats, ws_h, ws_gates, ws_hs, ws_hh_hat, ws_hn)


def _gru_workspace(new, T, B, H, save, norm):
    if not save:
        return new(0), new(0), new(0), new(0), new(0)
    return (new(0), new(T, B, 3 * H), new(T + 1, B, H, acc_type=False),
            new(T, B, 3 * H) if NormMode(norm) != NormMode.NONE else new(0), new(T, B, H))


gru_layer_forward.register_fake(lambda xp, h0, *params: schema.fake_gru_forward(xp, params, _gru_workspace))
schema.register_layer_autograd(GRU_FORWARD, GRU_BACKWARD, schema.GRU_SCHEMA)

__all__ = ["BACKWARD", "FORWARD", "GRU_BACKWARD", "GRU_FORWARD", "gru_layer_backward", "gru_layer_forward",
           "lstm_layer_backward", "lstm_layer_forward"]
