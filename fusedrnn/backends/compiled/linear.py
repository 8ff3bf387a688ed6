"""``fusedrnn::linear`` / ``_backward``: the input projection x @ W^T + b of a layer as the
native backend runs it (csrc/cpu/linear.cpp: float32 on oneDNN, float64 on at::mm).  Fake
kernels and autograd.  Shapes: x [..., I], weight [G, I], bias [G] -> [..., G].
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...core import schema


@torch.library.register_fake("fusedrnn::linear")
def _forward_fake(x: Tensor, weight: Tensor, bias: Optional[Tensor]):
    torch._check(x.shape[-1] == weight.shape[1])
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.register_fake("fusedrnn::linear_backward")
def _backward_fake(grad_y: Tensor, x: Tensor, weight: Tensor, bias: bool, grad_x: bool = True):
    return (x.new_empty(x.shape if grad_x else (0,)), weight.new_empty(weight.shape),
            weight.new_empty(weight.shape[0] if bias else 0))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]  # the first layer's input seldom needs one: a GEMM saved
    gx, gw, gb = torch.ops.fusedrnn.linear_backward(grad_y, x, weight, ctx.has_bias, need_x)
    return (gx if need_x else None), gw, (gb if ctx.has_bias else None)


torch.library.register_autograd("fusedrnn::linear", _backward, setup_context=_setup_context)
torch.library.register_autograd("fusedrnn::linear_backward", schema.no_double_backward("fusedrnn::linear_backward"),
                                setup_context=lambda ctx, inputs, output: None)


def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return torch.ops.fusedrnn.linear(x, weight, bias)
