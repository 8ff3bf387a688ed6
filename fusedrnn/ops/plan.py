"""Planning: one decision per module call, read by every layer below it.

A plan says whether torch's own LSTM / LSTMCell runs the whole call ("aten"), else which
backend runs the fused ops and in which dtype (:class:`Plan`).  Modules ask
:func:`plan_module` once per forward; the ops ask :func:`plan_op` when called directly.
Both are cached per configuration (the module's key: kind, backend name, device, dtype,
autocast, regularized-or-not, training, grad, and the facts of its first layer that a
backend decides on).

The rules (DESIGN.md, "Backend choice"; :func:`module_rule` says which one decided):
- an explicit backend runs as asked (``aten`` refuses what torch cannot do);
- an option torch's LSTM lacks (recurrent dropout, variational masks, batch norm, an
  explicit cell mask) or autocast (the fused path keeps c in float32) runs the fused ops;
- a plain cell step runs torch's own cell (the same GEMMs and pointwise kernel);
- a plain LSTM on the CPU runs torch's own (oneDNN);
- a plain LSTM on a GPU runs cuDNN unless a committed measurement for that GPU class shows
  a fused design faster at that shape (:mod:`.evidence`); in eval mode with gradients it
  runs fused (cuDNN has no backward in eval mode);
- under torch.compile the fused ops always run the LSTM (Dynamo cannot trace torch's).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch

from . import dispatch, evidence
from .contract import Backend, BackendError, Config, device_arch


@dataclasses.dataclass(frozen=True)
class Plan:
    """aten: torch's own module runs the call.  Else ``backend`` runs the fused ops with the
    recurrence in ``dtype`` (the data dtype; under autocast, ``autocast`` is the autocast
    dtype and ``dtype`` the one the backend runs: 16-bit where it keeps c in float32, else
    float32)."""

    aten: bool
    backend: Optional[Backend] = None
    dtype: Optional[torch.dtype] = None
    autocast: Optional[torch.dtype] = None
    error: Optional[str] = None  # no backend serves the call: raised after the module's argument checks

    def check(self) -> "Plan":
        """The plan, or BackendError when no backend can serve the call."""
        if self.error is not None:
            raise BackendError(self.error)
        return self


ATEN = Plan(aten=True)


def plan_op(name: str, cfg: Config, op: str = "recurrence", autocast: Optional[torch.dtype] = None) -> Plan:
    """The fused plan of one op call (cfg.dtype the data dtype, or the autocast dtype)."""
    be, dtype = dispatch.resolve(name, cfg, op, autocast)
    return Plan(aten=False, backend=be, dtype=dtype, autocast=autocast)


def plan_module(kind: str, op: str, name: str, device: torch.device, dtype: torch.dtype,
                autocast: Optional[torch.dtype], regularized: bool, training: bool, requires_grad: bool, B: int,
                H: int, R: int, proj: bool, mask: int, norm: int, lengths: bool, zoneout: bool = False) -> Plan:
    """The plan of one fusedrnn.LSTM (kind "lstm") or LSTMCell ("cell") call, from plain
    facts (every module call pays this: one dict lookup when the configuration was seen).
    op: the fused op it runs ("recurrence", or "cell" for a cell step without batch norm);
    ``regularized``: an option torch's module lacks is active in this call; B, H, R, proj,
    mask, norm, lengths, zoneout: its first layer's recurrence (MaskMode / NormMode values)."""
    if exporting():
        cfg = Config.build(device, autocast or dtype, 0, B, H, R, proj=proj, mask=mask, lengths=lengths,
                           norm=norm, requires_grad=requires_grad, zoneout=zoneout)
        return export_plan(kind, name, cfg, op, autocast, regularized)
    if torch.compiler.is_compiling():
        cfg = Config.build(device, autocast or dtype, 0, B, H, R, proj=proj, mask=mask, lengths=lengths,
                           norm=norm, requires_grad=requires_grad, zoneout=zoneout)
        if _compiled_rule(kind, name, device.type, cfg.dtype, True if (regularized or autocast) else False):
            return ATEN
        return plan_op(name, cfg, op, autocast)
    key = (kind, op, name, os.environ.get("FUSEDRNN_BACKEND"), dispatch.decision_env(), device, dtype, autocast,
           regularized, training, requires_grad, B, H, R, proj, mask, norm, lengths, zoneout)
    plan = _PLANS.get(key)
    if plan is None:
        cfg = Config.build(device, autocast or dtype, 0, B, H, R, proj=proj, mask=mask, lengths=lengths,
                           norm=norm, requires_grad=requires_grad, zoneout=zoneout)
        aten = module_rule(kind, name, cfg.device_type, cfg.dtype, bool(regularized or autocast), training,
                           requires_grad, B, H, cfg.arch)[0]
        if aten:
            plan = ATEN
        else:
            try:
                plan = plan_op(name, cfg, op, autocast)
            except BackendError as e:  # bad arguments (an integer input, say) fail their checks first
                plan = Plan(aten=False, error=str(e))
        _PLANS[key] = plan
    return plan


_PLANS: dict = {}


def exporting() -> bool:
    """Whether the call is being captured for deployment: torch.export (and the ONNX exporter
    built on it) or torch.jit tracing (the TorchScript ONNX exporter)."""
    return bool(torch.compiler.is_exporting() or torch.jit.is_tracing())


def export_plan(kind: str, name: str, cfg: Config, op: str, autocast: Optional[torch.dtype],
                regularized: bool) -> Plan:
    """The plan of a call being exported: standard ops only, so that the program runs without
    fusedrnn._C (AOT runtimes, ONNX).  A configuration torch's own module computes (no batch
    norm, no projection for the LSTM: ONNX's LSTM op has none) runs as torch's module, which
    exports to aten.lstm and ONNX's LSTM op; any other runs the reference backend, whose plain
    PyTorch ops unroll over the steps.  backend='reference' is kept as asked."""
    if dispatch.requested(name) != "reference" and not (regularized or autocast):
        if kind == "cell" or not cfg.proj:
            return ATEN
    return plan_op("reference", cfg, op, autocast)


@torch.compiler.assume_constant_result  # a trace-time constant (see fusedrnn.ops.dispatch)
def _compiled_rule(kind: str, name: str, device_type: str, dtype: torch.dtype, regularized: bool) -> bool:
    """module_rule under torch.compile.  torch.compile cannot trace torch's LSTM (Dynamo
    refuses nn.LSTM, and the CPU kernel is not traceable): the fused ops run the whole LSTM,
    so a plain fullgraph compile works.  torch's cell traces, and keeps its rule."""
    if kind == "lstm":
        if dispatch.requested(name) == "aten":
            raise BackendError("backend='aten' runs torch's own LSTM, which torch.compile cannot trace; "
                               "use backend='auto' or a fused backend")
        return False
    return module_rule(kind, name, device_type, dtype, regularized, True, True, 0, 0, "")[0]


def module_rule(kind: str, name: str, device_type: str, dtype: torch.dtype, regularized: bool, training: bool,
                needs_grad: bool, B: int, H: int, arch: str) -> tuple[bool, str]:
    """(torch's own module runs, the rule that decided), for :func:`plan_module` and explain()."""
    name = dispatch.requested(name)
    if name == "aten":
        if regularized:
            raise BackendError("backend='aten' (torch's own LSTM) cannot run recurrent dropout, "
                               "variational masks, batch norm or an explicit mask")
        return True, "backend='aten' was requested"
    if name != "auto":
        return False, f"backend={name!r} was requested"
    if regularized:
        return False, "an option torch's LSTM lacks is active (or autocast, whose cell state stays float32)"
    if kind == "cell":
        return True, "a plain cell step: torch's own cell runs the same GEMMs and pointwise kernel"
    if device_type == "cpu":
        if dtype in (torch.float32, torch.float64):
            return True, "plain LSTM on the CPU: torch's own (oneDNN) measures at least as fast"
        return False, f"torch's CPU LSTM is not the measured path for {dtype}"
    if device_type == "cuda":
        mode = "fwd+bwd" if needs_grad else "fwd"
        rec = evidence.faster_than_cudnn(arch, str(dtype).replace("torch.", ""), B, H, mode)
        if rec is not None:
            return False, (f"a committed measurement on {rec.get('gpu', arch)} has {rec['backend']} faster than "
                           f"cuDNN here ({rec['fused_ms']} vs {rec['cudnn_ms']} ms {mode}, {rec.get('source', '')})")
        if not training and needs_grad:
            return False, "eval mode with gradients: cuDNN has no backward in eval mode"
        return True, (f"plain LSTM on the GPU: cuDNN, since no committed measurement on {arch or 'this GPU'} shows "
                      f"a fused design faster at B={B}, H={H}, {dtype} ({mode})")
    return False, f"torch's LSTM is not used on {device_type}"


__all__ = ["ATEN", "Plan", "device_arch", "export_plan", "exporting", "module_rule", "plan_module", "plan_op"]
