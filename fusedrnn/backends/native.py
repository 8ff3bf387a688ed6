"""The compiled backends: the C++ ops of fusedrnn._C (csrc/).

One set of ``fusedrnn::`` ops, with a kernel per dispatch key: the CPU kernels form the
``native`` backend, the CUDA kernels the ``cuda`` backend.  This module loads the
library and registers, for every op, the fake (meta) kernel and the autograd formula,
so that torch.compile traces through the ops and autograd differentiates them.

Dimension letters: B batch, H hidden, G = 4H gates (i, f, g, o).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Backend

try:  # the compiled library; absent when the package was not built
    from .. import _C  # noqa: F401  (loading it registers the ops)

    LOAD_ERROR: Optional[str] = None
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    LOAD_ERROR = f"fusedrnn._C could not be imported ({e}); build it with `pip install -e .`"


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether fusedrnn::<op> has a kernel registered for dispatch_key ("CPU", "CUDA")."""
    if LOAD_ERROR is not None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedrnn::{op}", dispatch_key)
    except RuntimeError:  # no such op in this build
        return False


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- lstm_cell_forward / lstm_cell_backward -----------------------------------------

if LOAD_ERROR is None:

    @torch.library.register_fake("fusedrnn::lstm_cell_forward")
    def _cell_forward_fake(gates: Tensor, cx: Tensor):
        B, H = cx.shape
        torch._check(gates.shape[0] == B and gates.shape[1] == 4 * H)
        return cx.new_empty(B, H), cx.new_empty(B, H), cx.new_empty(B, 4 * H, dtype=_acc(cx.dtype))

    @torch.library.register_fake("fusedrnn::lstm_cell_backward")
    def _cell_backward_fake(grad_hy, grad_cy, act, cx, cy):
        B, H = cx.shape
        return cx.new_empty(B, 4 * H), cx.new_empty(B, H)

    def _cell_setup_context(ctx, inputs, output):
        _, cx = inputs
        _, cy, act = output
        ctx.save_for_backward(act, cx, cy)

    def _cell_backward(ctx, grad_hy, grad_cy, _grad_act):
        act, cx, cy = ctx.saved_tensors
        grad_hy = torch.zeros_like(cy) if grad_hy is None else grad_hy
        grad_cy = torch.zeros_like(cy) if grad_cy is None else grad_cy
        grad_gates, grad_cx = torch.ops.fusedrnn.lstm_cell_backward(grad_hy, grad_cy, act, cx, cy)
        return grad_gates, grad_cx

    torch.library.register_autograd(
        "fusedrnn::lstm_cell_forward", _cell_backward, setup_context=_cell_setup_context
    )


class CompiledBackend(Backend):
    """The fusedrnn._C kernels of one dispatch key."""

    def __init__(self, name: str, device_type: str, dispatch_key: str):
        self.name = name
        self.device_type = device_type
        self.dispatch_key = dispatch_key

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        if LOAD_ERROR is not None:
            return LOAD_ERROR
        if device.type != self.device_type:
            return (
                f"backend {self.name!r} runs on {self.device_type} tensors, got {device.type}"
            )
        if not has_kernel("lstm_cell_forward", self.dispatch_key):
            return f"fusedrnn._C was built without {self.dispatch_key} kernels"
        if device.type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is available"
        return None

    def unsupported_reason(self, cfg) -> Optional[str]:
        if not has_kernel("lstm_layer_forward", self.dispatch_key):
            return f"the {self.name} layer recurrence kernel is not built"
        return None

    def cell(self, gates: Tensor, cx: Tensor) -> tuple[Tensor, Tensor]:
        hy, cy, _ = torch.ops.fusedrnn.lstm_cell_forward(gates, cx)
        return hy, cy


NATIVE = CompiledBackend("native", "cpu", "CPU")
CUDA = CompiledBackend("cuda", "cuda", "CUDA")
