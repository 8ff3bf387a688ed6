"""The schema of the layer ops, shared by every op family, and its torch.library wiring.

Both ``fusedrnn::lstm_layer_forward`` / ``_backward`` (C++, csrc/module.cpp) and
``fusedrnn_triton::lstm_layer_forward`` / ``_backward`` take the same arguments, in this
order, with these encodings:

    forward(xp, h0, c0, *PARAMS, save_workspace)      (zoneout_c [T, B, H], zoneout_h [T, B, R])
        -> (y, h_n, c_n, h_stats, c_stats, ws_h, ws_act, ws_c, ws_hh_hat, ws_hc)
    backward(grad_y, grad_h_n, grad_c_n, *PARAMS, h_stats, c_stats, ws_h, ws_act, ws_c,
             ws_hh_hat, ws_hc)
        -> (grad_xp, grad_h0, grad_c0, grad_w_hh, grad_w_hr, grad_norm_h_weight,
            grad_norm_c_weight, grad_norm_c_bias)

with PARAMS the names below: mask_mode a :class:`~fusedrnn.core.contract.MaskMode`,
norm_mode a :class:`~fusedrnn.core.contract.NormMode` (batch norm in training or eval, or
layer norm); norm_h_weight, norm_c_weight, norm_c_bias and norm_eps are the gain of N_h, the
gain and bias of N_c and their epsilon for either norm; the bn_* arguments belong to batch
norm alone (eval-mode running statistics [S, G] / [S, H], the step index of the first step).

The workspace, saved for backward when save_workspace (one meaning in every family):

    ws_h       [T, B, R]  h_{s-1} * m_s, the operand of W_hh at each step (data dtype)
    ws_act     [T, B, G]  the activated gates (accumulation dtype)
    ws_c       [T+1, B, H] the cell states, c_0 first (accumulation dtype)
    ws_hh_hat  [T, B, G]  N_h's input or output, as the family's backward needs it (norms only)
    ws_hc      [T, B, H]  h before W_hr (projection only; data dtype)

Without save_workspace a family may return scratch of its own shape in these slots (a ring
of the last steps, or nothing); its fake kernel says which.  save_workspace is one of
:data:`SAVE_NONE`, :data:`SAVE_ALL` and :data:`SAVE_RECOMPUTE_NORM`, the recompute mode:
everything but ws_hh_hat, returned empty, which the backward rebuilds from ws_h, W_hh and
the norm's statistics (the CPU kernels only; the others refuse it).  Workspace tensors are
indexed by the step s (processing order).  :func:`layer_params` is the one flattener of the
contract's arguments into PARAMS, and :func:`register_layer_autograd` the one autograd
formula of a forward / backward pair.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from .contract import (BatchStats, CellKind, Config, Norm, NormMode, RecurrenceResult, RecurrentBN, RecurrentLN,
                       Zoneout, acc_dtype)

PARAMS = ("w_hh", "w_hr", "mask", "mask_mode", "lengths", "reverse", "norm_mode", "norm_h_weight", "norm_c_weight",
          "norm_c_bias", "bn_h_running_mean", "bn_h_running_var", "bn_c_running_mean", "bn_c_running_var",
          "bn_step_offset", "norm_eps", "zoneout_c", "zoneout_h")
# save_workspace of the fusedrnn layer ops: nothing, the workspace, all of it but ws_hh_hat
SAVE_NONE, SAVE_ALL, SAVE_RECOMPUTE_NORM = 0, 1, 2
FORWARD_OUTPUTS = ("y", "h_n", "c_n", "h_stats", "c_stats", "ws_h", "ws_act", "ws_c", "ws_hh_hat", "ws_hc")
# the parameters that have a gradient, and its position among the backward's outputs
_PARAM_GRADS = {"w_hh": 3, "w_hr": 4, "norm_h_weight": 5, "norm_c_weight": 6, "norm_c_bias": 7}


def named(params: tuple) -> dict:
    """The PARAMS (and save_workspace, when given) of an op call's arguments after its three
    data tensors, by name."""
    return dict(zip(PARAMS + ("save_workspace",), params))


def layer_params(cfg: Config, w_hh: Tensor, w_hr: Optional[Tensor], mask: Optional[Tensor],
                 lengths: Optional[Tensor], norm: Optional[Norm], zoneout: Optional[Zoneout] = None) -> tuple:
    """The PARAMS of a recurrence, in order.  Eval-mode running statistics in the data dtype.
    Layer norm passes its LN_h gain and LN_c gain and bias as the norm_* arguments; LN_h's
    bias is a constant of every step, which :func:`run_layer_forward` adds to xp."""
    zo = (None, None) if zoneout is None else (zoneout.c, zoneout.h)
    if norm is None:
        rest = (None,) * 7 + (0, 1e-5)
    elif cfg.norm == NormMode.LAYER:
        rest = (norm.weight_h, norm.weight_c, norm.bias_c) + (None,) * 4 + (0, float(norm.eps))
    else:
        run = (None,) * 4 if norm.training else tuple(
            t.to(cfg.dtype) for t in (norm.running_mean_h, norm.running_var_h, norm.running_mean_c,
                                      norm.running_var_c))
        rest = (norm.weight_h, norm.weight_c, norm.bias_c) + run + (int(norm.step_offset), float(norm.eps))
    return (w_hh, w_hr, mask, int(cfg.mask), lengths, bool(cfg.reverse), int(cfg.norm)) + rest + zo


def run_layer_forward(op, cfg: Config, xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                      mask: Optional[Tensor], lengths: Optional[Tensor], norm: Optional[Norm],
                      zoneout: Optional[Zoneout] = None, save=None) -> RecurrenceResult:
    """Call a layer forward op of any family on the contract's arguments; the contract's result.
    ``save``: the op's save_workspace (by default whether autograd will differentiate the call)."""
    if isinstance(norm, RecurrentLN):  # LN_h's bias enters every step's pre-activation: folded into xp
        xp = xp + norm.bias_h.to(xp.dtype)
    y, h_n, c_n, h_stats, c_stats, *_ = op(xp, h0, c0, *layer_params(cfg, w_hh, w_hr, mask, lengths, norm, zoneout),
                                           int(cfg.requires_grad) if save is None else save)
    stats = None
    if isinstance(norm, RecurrentBN) and norm.training:
        stats = BatchStats(h_stats[:, 0], h_stats[:, 1], c_stats[:, 0], c_stats[:, 1])
    return RecurrenceResult(y, h_n, c_n, stats)


def no_double_backward(op: str):
    """An autograd formula for a backward op: it refuses to be differentiated."""
    def formula(ctx, *grads):
        raise RuntimeError(f"fusedrnn: {op} is not differentiable (no double backward); use "
                           "backend='reference' for higher-order gradients")
    return formula


@dataclasses.dataclass(frozen=True)
class LayerSchema:
    """The argument layout of one cell's layer-op pair: the differentiable data tensors that
    lead the forward, the PARAMS after them, and which backward output is whose gradient."""

    cell: CellKind
    data: tuple  # the forward's leading tensors (their gradients lead the backward's outputs)
    params: tuple
    param_grads: dict  # parameter name -> position among the backward's outputs

    def fake_grads(self, args: tuple) -> tuple:
        """The fake outputs of the backward op from its arguments (grads, PARAMS, saved)."""
        if self.cell == CellKind.LSTM:
            return fake_grads(args[0], args[3], args[4], args[9])
        grad_y, w_hh, b_hh, norm_mode = args[0], args[2], args[3], args[8]
        T, B, _ = grad_y.shape
        G, H = w_hh.shape
        e = grad_y.new_empty
        return (e(T, B, G), e(B, H), e(G, H), e(G if b_hh is not None else 0),
                e(G if norm_mode != NormMode.NONE else 0))


LSTM_SCHEMA = LayerSchema(CellKind.LSTM, ("xp", "h0", "c0"), PARAMS, _PARAM_GRADS)


def register_layer_autograd(forward: str, backward: str, schema: LayerSchema = LSTM_SCHEMA) -> None:
    """The fake kernel of the backward op (the same for every family of a cell), the autograd
    formula of a forward / backward op pair with this schema (qualified names,
    "fusedrnn::lstm_layer_forward"), and no double backward."""
    torch.library.register_fake(backward)(lambda *args: schema.fake_grads(args))
    backward_op = _op(backward)
    n, k0 = len(schema.params), len(schema.data)

    def setup_context(ctx, inputs, output):
        params = inputs[k0:k0 + n]
        save = inputs[k0 + n]
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*output[k0:])
        tensors = [i for i, p in enumerate(params) if p is None or isinstance(p, Tensor)]
        ctx.tensor_pos = tensors
        ctx.scalars = {i: p for i, p in enumerate(params) if i not in tensors}
        ctx.save_for_backward(*(params[i] for i in tensors), *output[k0:])
        ctx.save = save
        ctx.meta = tuple((t.shape, t.dtype) for t in output[:k0])

    def backward_fn(ctx, *grad_outputs):
        if not ctx.save:
            raise RuntimeError(
                f"fusedrnn: {forward} ran without saving for backward (no input required grad), so it "
                "cannot be differentiated")
        saved = ctx.saved_tensors
        k = len(ctx.tensor_pos)
        params = [None] * n
        for i, t in zip(ctx.tensor_pos, saved[:k]):
            params[i] = t
        for i, v in ctx.scalars.items():
            params[i] = v
        dev = saved[k].device  # the first statistics tensor
        grads = [torch.zeros(shape, dtype=dtype, device=dev) if g is None else g
                 for g, (shape, dtype) in zip(grad_outputs[:k0], ctx.meta)]
        out = backward_op(*grads, *params, *saved[k:])
        names = dict(zip(schema.params, params))
        result = list(out[:k0])
        for name in schema.params:
            pos = schema.param_grads.get(name)
            result.append(out[pos] if pos is not None and names[name] is not None else None)
        return tuple(result) + (None,)  # save_workspace

    torch.library.register_autograd(forward, backward_fn, setup_context=setup_context)
    torch.library.register_autograd(backward, no_double_backward(backward),
                                    setup_context=lambda ctx, inputs, output: None)


def fake_forward(xp: Tensor, params: tuple, workspace) -> tuple:
    """The fake (meta) outputs of a layer forward: y, h_n, c_n, h_stats, c_stats, the same
    for every family, then ``workspace(new, T, B, H, R, save, norm, proj)``, the family's
    five workspace tensors (``new(*shape, acc_type=True)`` makes one, in the accumulation
    dtype, or with ``acc_type=False`` in the data dtype)."""
    a = named(params)
    T, B, G = xp.shape
    H, R = G // 4, a["w_hh"].shape[1]
    acc = acc_dtype(xp.dtype)
    norm = a["norm_mode"]
    n = T if norm in (NormMode.BATCH_TRAIN, NormMode.LAYER) else 0
    layer = norm == NormMode.LAYER  # per-row statistics [T, 2, B] instead of per column

    def new(*shape, acc_type=True):
        return xp.new_empty(shape, dtype=acc if acc_type else xp.dtype)

    return (xp.new_empty(T, B, R), xp.new_empty(B, R), xp.new_empty(B, H), new(n, 2, B if layer else G),
            new(n, 2, B if layer else H)) + tuple(
        workspace(new, T, B, H, R, a["save_workspace"], norm, a["w_hr"] is not None))


def fake_grads(grad_y: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], norm_mode: int) -> tuple:
    """The fake outputs of a layer backward (the same for every family; arguments 0, 3, 4
    and 9 of the backward op)."""
    T, B, _ = grad_y.shape
    G, R = w_hh.shape
    H = G // 4
    normed = norm_mode != NormMode.NONE
    e = grad_y.new_empty
    return (e(T, B, G), e(B, R), e(B, H), e(G, R), e(*w_hr.shape) if w_hr is not None else e(0),
            e(G if normed else 0), e(H if normed else 0), e(H if normed else 0))


# ---- the GRU's layer ops ----------------------------------------------------------------------
#
#   gru_forward(xp, h0, *GRU_PARAMS, save_workspace)
#       -> (y, h_n, h_stats, ws_h, ws_gates, ws_hs, ws_hh_hat, ws_hn)
#   gru_backward(grad_y, grad_h_n, *GRU_PARAMS, h_stats, ws_h, ws_gates, ws_hs, ws_hh_hat, ws_hn)
#       -> (grad_xp, grad_h0, grad_w_hh, grad_b_hh, grad_norm_h_weight)
#
# xp [T, B, 3H] = N_x(x W_ih^T) + b_ih (time order), h0 [B, H], w_hh [3H, H], b_hh [3H] (LN_h's
# bias folded in; inside the reset product for the n block), norm_h_weight [3H] the gain of N_h
# (batch or layer norm; no c parts), bn_h_running_* [S, 3H] (batch norm in eval), zoneout_h
# [T, B, H].  h_stats: batch norm in training [T, 2, 3H] (mean, biased var per column); layer
# norm [T, 2, B] (mean, rstd per row); else empty.  The workspace (when save_workspace; one
# meaning in every family):
#
#   ws_h       [T, B, H]    h_{s-1} * m_s, the operand of W_hh (data dtype)
#   ws_gates   [T, B, 3H]   the activated gates r, z, n (accumulation dtype)
#   ws_hs      [T + 1, B, H] the states h_0 .. h_T, unmasked (accumulation dtype)
#   ws_hh_hat  [T, B, 3H]   N_h's normalised W_hh h (norms only; accumulation dtype)
#   ws_hn      [T, B, H]    the n block of N_h(W_hh h) + b_hh, the reset product's operand
#
# grad_b_hh is [3H] (empty without b_hh), grad_norm_h_weight [3H] (empty without a norm).

GRU_PARAMS = ("w_hh", "b_hh", "mask", "mask_mode", "lengths", "reverse", "norm_mode", "norm_h_weight",
              "bn_h_running_mean", "bn_h_running_var", "bn_step_offset", "norm_eps", "zoneout_h")
GRU_FORWARD_OUTPUTS = ("y", "h_n", "h_stats", "ws_h", "ws_gates", "ws_hs", "ws_hh_hat", "ws_hn")
GRU_SCHEMA = LayerSchema(CellKind.GRU, ("xp", "h0"), GRU_PARAMS, {"w_hh": 2, "b_hh": 3, "norm_h_weight": 4})


def gru_params(cfg: Config, w_hh: Tensor, b_hh: Optional[Tensor], mask: Optional[Tensor],
               lengths: Optional[Tensor], norm: Optional[Norm], zoneout: Optional[Zoneout] = None) -> tuple:
    """The GRU_PARAMS of a GRU recurrence, in order (b_hh with LN_h's bias folded in already)."""
    if norm is None:
        rest = (None, None, None, 0, 1e-5)
    elif cfg.norm == NormMode.LAYER:
        rest = (norm.weight_h, None, None, 0, float(norm.eps))
    else:
        run = (None, None) if norm.training else tuple(t.to(cfg.dtype) for t in (norm.running_mean_h,
                                                                                 norm.running_var_h))
        rest = (norm.weight_h,) + run + (int(norm.step_offset), float(norm.eps))
    return (w_hh, b_hh, mask, int(cfg.mask), lengths, bool(cfg.reverse), int(cfg.norm)) + rest + (
        None if zoneout is None else zoneout.h,)


def run_gru_forward(op, cfg: Config, xp: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                    mask: Optional[Tensor], lengths: Optional[Tensor], norm: Optional[Norm],
                    zoneout: Optional[Zoneout] = None, save=None) -> RecurrenceResult:
    """Call a GRU forward op of any family on the contract's arguments; the contract's result
    (``save`` as :func:`run_layer_forward`'s)."""
    y, h_n, h_stats, *_ = op(xp, h0, *gru_params(cfg, w_hh, b_hh, mask, lengths, norm, zoneout),
                             int(cfg.requires_grad) if save is None else save)
    stats = None
    if isinstance(norm, RecurrentBN) and norm.training:
        stats = BatchStats(h_stats[:, 0], h_stats[:, 1], None, None)
    return RecurrenceResult(y, h_n, None, stats)


def fake_gru_forward(xp: Tensor, params: tuple, workspace) -> tuple:
    """The fake outputs of a GRU forward: y, h_n, h_stats, then ``workspace(new, T, B, H, save,
    norm)``, the family's five workspace tensors (``new`` as :func:`fake_forward`'s)."""
    a = dict(zip(GRU_PARAMS + ("save_workspace",), params))
    T, B, G = xp.shape
    H = G // 3
    acc = acc_dtype(xp.dtype)
    norm = a["norm_mode"]
    n = T if norm in (NormMode.BATCH_TRAIN, NormMode.LAYER) else 0

    def new(*shape, acc_type=True):
        return xp.new_empty(shape, dtype=acc if acc_type else xp.dtype)

    return (xp.new_empty(T, B, H), xp.new_empty(B, H), new(n, 2, B if norm == NormMode.LAYER else G)) + tuple(
        workspace(new, T, B, H, a["save_workspace"], norm))


def _op(qualname: str):
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name).default


__all__ = ["FORWARD_OUTPUTS", "GRU_FORWARD_OUTPUTS", "GRU_PARAMS", "GRU_SCHEMA", "LSTM_SCHEMA", "LayerSchema", "PARAMS",
           "SAVE_ALL", "SAVE_NONE", "SAVE_RECOMPUTE_NORM",
           "fake_forward", "fake_grads", "fake_gru_forward", "gru_params", "layer_params", "named",
           "no_double_backward", "register_layer_autograd", "run_gru_forward", "run_layer_forward"]
