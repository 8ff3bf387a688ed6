"""``fusedrnn::drop_connect``: DropConnect's masked weight in one pass from the generator's
words (csrc/cpu/drop_connect.cpp; CPU only).  Fake kernel and autograd: dL/dW = dL/dW~ * mask,
which is the op itself on the gradient.  :func:`fusedrnn.ops.dropout.drop_connect` draws the
words and calls it.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.register_fake("fusedrnn::drop_connect")
def _fake(weight: Tensor, words: Tensor, low: int, top: int, keep: float):
    return weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    _, words, low, top, keep = inputs
    ctx.save_for_backward(words)
    ctx.rule = (low, top, keep)


def _backward(ctx, grad):
    words, = ctx.saved_tensors
    return torch.ops.fusedrnn.drop_connect(grad, words, *ctx.rule), None, None, None, None


torch.library.register_autograd("fusedrnn::drop_connect", _backward, setup_context=_setup_context)
