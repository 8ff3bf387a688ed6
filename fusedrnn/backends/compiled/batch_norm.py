"""``fusedrnn::batch_norm_steps_forward`` / ``_backward``: per-step batch norm over a whole
sequence (BN_x of recurrent batch norm), with the processing-order mapping of reverse /
lengths done in the kernel.  Fake kernels, autograd, and :func:`input_norm`, the input norm
of the compiled backends.  Kernels in csrc/cpu/batch_norm.cpp and csrc/cuda/batch_norm.cu.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...core import schema
from ...core.contract import RecurrentBN, acc_dtype


@torch.library.register_fake("fusedrnn::batch_norm_steps_forward")
def _forward_fake(v, weight, bias, lengths, reverse, eval_mean, eval_var, training, eps):
    T, _, F = v.shape
    n = T if training else 0
    acc = acc_dtype(v.dtype)
    return v.new_empty(v.shape), v.new_empty(n, F, dtype=acc), v.new_empty(n, F, dtype=acc)


@torch.library.register_fake("fusedrnn::batch_norm_steps_backward")
def _backward_fake(grad_out, v, weight, lengths, reverse, mean, var, training, eps):
    F = v.shape[2]
    return v.new_empty(v.shape), v.new_empty(F), v.new_empty(F)


def _setup_context(ctx, inputs, output):
    v, weight, bias, lengths, reverse, eval_mean, eval_var, training, eps = inputs
    _, mean, var = output
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(v, weight, lengths, mean if training else eval_mean, var if training else eval_var)
    ctx.flags = (reverse, training, eps, bias is not None)


def _backward(ctx, grad_out, _gm, _gv):
    v, weight, lengths, mean, var = ctx.saved_tensors
    reverse, training, eps, has_bias = ctx.flags
    if grad_out is None:
        return (None,) * 9
    g_v, g_w, g_b = torch.ops.fusedrnn.batch_norm_steps_backward(grad_out, v, weight, lengths, reverse, mean, var,
                                                                 training, eps)
    return g_v, g_w, g_b if has_bias else None, None, None, None, None, None, None


torch.library.register_autograd("fusedrnn::batch_norm_steps_forward", _backward, setup_context=_setup_context)
torch.library.register_autograd("fusedrnn::batch_norm_steps_backward", schema.no_double_backward("fusedrnn::batch_norm_steps_backward"),
                                setup_context=lambda ctx, inputs, output: None)


def input_norm(cfg, xw: Tensor, bias: Optional[Tensor], lengths: Optional[Tensor], bn: RecurrentBN,
               slots: Tensor) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """The contract's input norm (:meth:`fusedrnn.core.contract.Backend.input_norm`) in one
    fused pass: BN_x of xw [T, B, G] plus bias."""
    em = ev = None
    if not bn.training:
        em = bn.running_mean_x.index_select(0, slots).to(xw.dtype)
        ev = bn.running_var_x.index_select(0, slots).to(xw.dtype)
    out, mean, var = torch.ops.fusedrnn.batch_norm_steps_forward(
        xw, bn.weight_x.to(xw.dtype), None if bias is None else bias.to(xw.dtype), lengths, cfg.reverse, em, ev,
        bn.training, bn.eps)
    return out, (mean if bn.training else None), (var if bn.training else None)
