"""``fusedrnn::lstm_cell_forward`` / ``_backward``: the fused pointwise step of one LSTM cell
(gates [B, G] pre-activations, cx [B, H] -> hy, cy, and the activated gates act [B, G] in the
accumulation dtype for backward).  Fake kernels and autograd; kernels in csrc/cpu/cell.cpp
and csrc/cuda/cell.cu.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core import schema
from ...core.contract import acc_dtype


@torch.library.register_fake("fusedrnn::lstm_cell_forward")
def _forward_fake(gates: Tensor, cx: Tensor):
    B, H = cx.shape
    torch._check(gates.shape[0] == B and gates.shape[1] == 4 * H)
    return cx.new_empty(B, H), cx.new_empty(B, H), cx.new_empty(B, 4 * H, dtype=acc_dtype(cx.dtype))


@torch.library.register_fake("fusedrnn::lstm_cell_backward")
def _backward_fake(grad_hy, grad_cy, act, cx, cy):
    B, H = cx.shape
    return cx.new_empty(B, 4 * H), cx.new_empty(B, H)


def _setup_context(ctx, inputs, output):
    _, cx = inputs
    _, cy, act = output
    ctx.save_for_backward(act, cx, cy)


def _backward(ctx, grad_hy, grad_cy, _grad_act):
    act, cx, cy = ctx.saved_tensors
    grad_hy = torch.zeros_like(cy) if grad_hy is None else grad_hy
    grad_cy = torch.zeros_like(cy) if grad_cy is None else grad_cy
    return torch.ops.fusedrnn.lstm_cell_backward(grad_hy, grad_cy, act, cx, cy)


torch.library.register_autograd("fusedrnn::lstm_cell_forward", _backward, setup_context=_setup_context)
torch.library.register_autograd("fusedrnn::lstm_cell_backward", schema.no_double_backward("fusedrnn::lstm_cell_backward"),
                                setup_context=lambda ctx, inputs, output: None)


def forward(gates: Tensor, cx: Tensor) -> tuple[Tensor, Tensor]:
    hy, cy, _ = torch.ops.fusedrnn.lstm_cell_forward(gates, cx)
    return hy, cy
