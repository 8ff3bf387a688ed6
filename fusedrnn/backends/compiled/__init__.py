"""The compiled ops of fusedrnn._C (csrc/): loading the library, what it registered, and the
torch.library wiring (fake kernels, autograd) of each op family, one file per op:

- :mod:`.layer`: ``fusedrnn::lstm_layer_forward`` / ``_backward`` (the recurrence);
- :mod:`.gru`: ``fusedrnn::gru_layer_forward`` / ``_backward`` (the GRU's recurrence; CPU only);
- :mod:`.batch_norm`: ``fusedrnn::batch_norm_steps_forward`` / ``_backward`` (BN_x);
- :mod:`.cell`: ``fusedrnn::lstm_cell_forward`` / ``_backward`` (one pointwise step);
- :mod:`.linear`: ``fusedrnn::linear`` / ``_backward`` (the input projection; CPU only);
- :mod:`.drop_connect`: ``fusedrnn::drop_connect`` (DropConnect's masked weight; CPU only).

One set of ops, with a kernel per dispatch key: the CPU kernels form the ``native``
backend (:mod:`fusedrnn.backends.cpu`), the CUDA kernels the ``cuda`` backend
(:mod:`fusedrnn.backends.cuda`); :class:`CompiledBackend` is what they share.

Dimension letters: T steps, B batch, H hidden, R width of h, G = 4H gates (3H for the GRU).
"""

from __future__ import annotations

from typing import Optional

import torch

from ...core.contract import Backend, CellKind, Config

try:  # the compiled library; absent when the package was not built
    from ... import _C  # noqa: F401  (loading it registers the ops)

    LOAD_ERROR: Optional[str] = None
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    _C = None
    LOAD_ERROR = f"fusedrnn._C could not be imported ({e}); build it with `pip install -e .`"

OPS = ("lstm_cell_forward", "lstm_cell_backward", "lstm_layer_forward", "lstm_layer_backward", "gru_layer_forward",
       "gru_layer_backward",
       "batch_norm_steps_forward", "batch_norm_steps_backward", "linear", "linear_backward", "drop_connect",
       "cuda_persistent_layout")


def _query_kernel(op: str, dispatch_key: str) -> bool:
    if LOAD_ERROR is not None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedrnn::{op}", dispatch_key)
    except RuntimeError:  # no such op in this build
        return False


# Registrations are fixed once the library is loaded: the answers are looked up in a plain
# dict, which torch.compile traces (it cannot trace the dispatcher query itself).
_KERNELS = {(op, key): _query_kernel(op, key) for op in OPS for key in ("CPU", "CUDA")}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether fusedrnn::<op> has a kernel registered for dispatch_key ("CPU", "CUDA")."""
    if (op, dispatch_key) not in _KERNELS:
        _KERNELS[op, dispatch_key] = _query_kernel(op, dispatch_key)
    return _KERNELS[op, dispatch_key]


if LOAD_ERROR is None:
    from . import batch_norm, cell, drop_connect, gru, layer, linear  # noqa: E402,F401  (fake kernels, autograd)


class CompiledBackend(Backend):
    """The fusedrnn._C kernels of one dispatch key: the recurrence, BN_x and the cell step
    are the ops of this package."""

    def __init__(self, name: str, device_type: str, dispatch_key: str):
        self.name = name
        self.device_type = device_type
        self.dispatch_key = dispatch_key

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        if LOAD_ERROR is not None:
            return LOAD_ERROR
        if device.type != self.device_type:
            return f"backend {self.name!r} runs on {self.device_type} tensors, got {device.type}"
        if not has_kernel("lstm_cell_forward", self.dispatch_key):
            return f"fusedrnn._C was built without {self.dispatch_key} kernels"
        return None

    def unsupported_reason(self, cfg: Config) -> Optional[str]:
        op = "gru_layer_forward" if cfg.cell == CellKind.GRU else "lstm_layer_forward"
        if not has_kernel(op, self.dispatch_key):
            return f"the {self.name} {cfg.cell.name} layer recurrence kernel is not built"
        return None

    def has_op(self, op: str) -> bool:
        """Whether fusedrnn::<op> has a kernel of this backend's dispatch key."""
        return has_kernel(op, self.dispatch_key)

    def recurrence(self, cfg, xp, h0, c0, w_hh, w_hr, mask, lengths, norm, zoneout=None, b_hh=None):
        if cfg.cell == CellKind.GRU:
            return gru.forward(cfg, xp, h0, w_hh, b_hh, mask, lengths, norm, zoneout)
        return layer.forward(cfg, xp, h0, c0, w_hh, w_hr, mask, lengths, norm, zoneout)

    def input_norm(self, cfg, xw, bias, lengths, bn, slots):
        return batch_norm.input_norm(cfg, xw, bias, lengths, bn, slots)

    def cell(self, gates, cx):
        return cell.forward(gates, cx)


__all__ = ["CompiledBackend", "LOAD_ERROR", "has_kernel"]
