"""Deciding what runs a call: torch's own module ("aten"), or a backend and a compute dtype.

One :class:`Decision` per module call (:func:`decide_module`) or direct op call
(:func:`decide_op`); every layer below reads it instead of deciding again.  Decisions are
cached in one dict, keyed on the call's :class:`~fusedrnn.core.contract.Config` (its
sequence length left out), the requested backend, the environment switches a decision reads
(:data:`DECISION_ENV`) and, for modules, the mode.

The rules (:func:`module_rule` says which one decided):

- an explicit backend runs as asked (``aten`` refuses what torch cannot do);
- an option torch's LSTM lacks (recurrent dropout, variational masks, batch norm, layer
  norm, zoneout, weight dropout, an explicit cell mask) or autocast (the fused path keeps c
  in float32) runs the fused ops;
- a plain cell step runs torch's own cell (the same GEMMs and pointwise kernel);
- a plain LSTM on the CPU runs torch's own (oneDNN), except in training (train mode, with
  gradients) in float32 without a projection at the batch sizes where the committed records
  measure the native kernel faster (:data:`LSTM_NATIVE_MAX_B`); a plain float32 GRU on the
  CPU runs the native kernel at B <= :data:`GRU_NATIVE_MAX_B`, in training and in inference;
- a plain LSTM on a GPU runs cuDNN unless a committed measurement for that GPU class shows
  a fused design faster at that shape (:mod:`.evidence`); in eval mode with gradients it
  runs fused (cuDNN has no backward in eval mode);
- under torch.compile the fused ops always run the LSTM (Dynamo cannot trace torch's);
- under torch.export / ONNX export, standard ops only (:func:`export_decision`).

Which backend runs the fused ops: ``backend="auto"`` (the default everywhere) takes the
first backend of the device's :data:`PREFERENCE` order that is available and supports the
configuration; on a GPU, backends whose GPU tests have passed on real hardware of that GPU
class with the installed kernels come first (:mod:`.evidence`); where none has, the fused
kernels still run, fastest first, with a warning once per backend and GPU class (the plain
PyTorch reference would be correct but is a per-step loop).  ``FUSEDRNN_BACKEND`` overrides
"auto".  An explicitly
named backend that is unavailable, or cannot serve the configuration, raises
:class:`BackendError` naming what is missing; nothing falls back silently.

Under torch.compile the decision is taken while tracing, as a constant
(``torch.compiler.assume_constant_result``'s mark, set by
:func:`fusedrnn.core.trace.trace_constant`): it depends only on Python values (the requested
name, the configuration's fields, the mode), which Dynamo guards on, so the traced graph
holds the chosen backend's op with no graph break.  The batch size is specialised (a new
batch size recompiles), the sequence length is not (backends must not decide on
``Config.T``), and the environment is read when a graph is traced.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import warnings
from typing import Optional, Union

import torch

from .. import backends
from ..core.contract import Backend, BackendError, CellKind, Config
from ..core.trace import trace_constant
from . import evidence

# Backends that run whole fusedrnn.LSTM / LSTMCell modules rather than one op: "aten" is
# torch's own LSTM / LSTMCell (oneDNN on the CPU, cuDNN on a GPU).
MODULE_ONLY = ("aten",)

# Fastest first, per device type.
PREFERENCE = {
    "cpu": ("native", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}

# The environment switches a decision reads (FUSEDRNN_BACKEND in requested(); the cuda
# backend's FUSEDRNN_CUDA_UNVERIFIED): part of every cached decision's key, so flipping one
# is not answered from the cache.
DECISION_ENV = ("FUSEDRNN_BACKEND", "FUSEDRNN_CUDA_UNVERIFIED")


@dataclasses.dataclass(frozen=True)
class Decision:
    """aten: torch's own module runs the call.  Else ``backend`` runs the fused ops with the
    recurrence in ``dtype`` (the data dtype; under autocast, ``autocast`` is the autocast
    dtype and ``dtype`` the one the backend runs: 16-bit where it keeps c in float32, else
    float32)."""

    aten: bool
    backend: Optional[Backend] = None
    dtype: Optional[torch.dtype] = None
    autocast: Optional[torch.dtype] = None
    error: Optional[str] = None  # no backend serves the call: raised after the module's argument checks

    def check(self) -> "Decision":
        """The decision, or BackendError when no backend can serve the call."""
        if self.error is not None:
            raise BackendError(self.error)
        return self


ATEN = Decision(aten=True)


# ---- backend names and availability ------------------------------------------------------


def check_backend_name(name: str) -> str:
    """Validate a backend argument; raises ValueError naming the argument."""
    known = ("auto",) + backends.NAMES + MODULE_ONLY
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"backend must be one of {known}, got {name!r}")
    return name


def requested(name: str) -> str:
    """The backend asked for: ``name``, or FUSEDRNN_BACKEND in place of "auto"."""
    check_backend_name(name)
    if name == "auto":
        env = os.environ.get("FUSEDRNN_BACKEND", "").strip()
        if env and env != "auto":
            try:
                return check_backend_name(env)
            except ValueError as e:
                raise ValueError(f"FUSEDRNN_BACKEND: {e}") from None
    return name


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """None if backend ``name`` can run on ``device``, else why not."""
    if name in MODULE_ONLY:
        return (f"backend {name!r} (torch's own LSTM) runs whole fusedrnn.LSTM modules without "
                "regularizers, not single recurrences")
    be = backends.get(name)
    if be is None:
        return f"backend {name!r} cannot be imported: {backends.import_error(name)}"
    return be.unavailable_reason(device)


def available_backends(device: Union[str, torch.device, None] = None) -> list[str]:
    """Backends that can run on ``device`` (default: CUDA if present, else CPU), fastest first."""
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    return [n for n in PREFERENCE.get(dev.type, ("reference",)) if unavailable_reason(n, dev) is None]


def gpu_status(name: str, arch: str) -> str:
    """"validated" (its GPU tests passed on this GPU class with the installed kernels),
    "stale" (they passed at an earlier version of the kernels) or "none" (:mod:`.evidence`)."""
    be = backends.get(name)
    return evidence.status(name, arch, be.fingerprint() if be is not None else None)[0]


def candidates(name: str, cfg: Config) -> tuple[tuple[str, ...], str]:
    """The backends to try, in order, for a configuration, and the rule that ordered them."""
    name = requested(name)
    if name != "auto":
        return (name,), f"backend={name!r} was requested"
    order = PREFERENCE.get(cfg.device_type, ("reference",))
    if cfg.device_type != "cuda":
        return order, f"the {cfg.device_type} preference order (fastest first)"
    state = {n: gpu_status(n, cfg.arch) for n in order}
    proven = tuple(n for n in order if state[n] == "validated")
    stale = [n for n in order if state[n] == "stale"]
    note = (f"; {', '.join(stale)} passed its GPU tests on {cfg.arch} at an earlier version of its kernels, "
            "which does not count" if stale else "")
    if not proven:
        return order, (f"no backend has passed its GPU tests on {cfg.arch or 'this GPU'} with the installed "
                       f"kernels: the default order (fastest first by design){note}")
    rest = tuple(n for n in order if n not in proven)
    return proven + rest, (f"{', '.join(proven)} passed its GPU tests on real {cfg.arch} hardware with the "
                           f"installed kernels: it comes before backends that have not{note}")


def _why_not(be: Backend, cfg: Config, op: str) -> Optional[str]:
    if cfg.cell not in be.cells:
        return f"the {be.name} backend has no {cfg.cell.name} kernels{be.cells_note}"
    return be.unsupported_reason(cfg) if op == "recurrence" else be.cell_unsupported_reason(cfg)


def explain_config(name: str, cfg: Config, op: str = "recurrence") -> list[tuple[str, Optional[str]]]:
    """For each candidate backend, None if it would run this configuration, else why not.

    The first entry with None is the one :func:`decide_op` picks (outside autocast)."""
    out = []
    for n in candidates(name, cfg)[0]:
        why = unavailable_reason(n, torch.device(cfg.device_type))
        out.append((n, why if why is not None else _why_not(backends.get(n), cfg, op)))
    return out


# ---- the rules ---------------------------------------------------------------------------


# The batch size up to which a plain float32 GRU runs the native kernel on the CPU: the
# largest of the cpu preset, where both runs since the chunked K > 512 GEMM (2026-12-06,
# git b03f5fd and 61babf5; benchmarks/results/cpu-epyc-2c.jsonl, the gru: rows;
# benchmarks/NOTES.md) have it ahead of torch's GRU at every point: fwd+bwd 9.0-9.4x /
# 2.3-2.4x / 1.36x / 1.19x / 1.13-1.15x at B = 1 / 8 / 32 / 64 / 128, inference 2.3-2.8x /
# 1.4x / 1.10-1.16x / 1.19-1.20x / 1.07-1.08x.  Beyond it nothing is measured: torch's GRU.
GRU_NATIVE_MAX_B = 128


# The batch size up to which a plain float32 LSTM in training (train mode, gradients; no
# projection) runs the native kernel on the CPU: the largest of the cpu preset, where every
# run since the fused forward step (2026-12-06, git 9f6256d, b3658ed, 8f65857,
# 2fcec10-dirty and 5df2403; 2026-12-07, git 97f26dd and 6125425;
# benchmarks/results/cpu-epyc-2c.jsonl; benchmarks/NOTES.md) has it ahead of torch's LSTM
# fwd+bwd at every point; the last three: 1.33 / 1.30 / 1.24x, 1.08 / 1.06 / 1.12x,
# 1.24 / 1.28 / 1.26x, 1.13 / 1.20 / 1.14x and 1.17 / 1.19 / 1.23x at B = 1 / 8 / 32 / 64 /
# 128.  Inference keeps torch's LSTM (0.86-0.98x at B = 8 to 128 in those runs, 1.00-1.19x
# at B = 1), and so do eval mode (its forward with gradients is not what the preset
# measures) and a projection (no fused step).
LSTM_NATIVE_MAX_B = 128


def module_rule(kind: str, name: str, cfg: Config, regularized: bool, training: bool) -> tuple[bool, str]:
    """(torch's own module runs, the rule that decided) for a module call ("rnn": an LSTM or
    GRU, "cell": a cell step) whose first layer has configuration ``cfg`` (cfg.cell the cell,
    cfg.dtype the autocast dtype under autocast; ``regularized`` includes autocast)."""
    rnn = cfg.cell.name  # "LSTM" or "GRU"
    name = requested(name)
    if name == "aten":
        if regularized:
            raise BackendError(f"backend='aten' (torch's own {rnn}) cannot run recurrent dropout, "
                               "variational masks, batch norm, layer norm, zoneout, weight dropout or an explicit mask")
        return True, "backend='aten' was requested"
    if name != "auto":
        return False, f"backend={name!r} was requested"
    if regularized:
        return False, f"an option torch's {rnn} lacks is active (or autocast, whose cell state stays float32)"
    if kind == "cell":
        return True, "a plain cell step: torch's own cell runs the same GEMMs and pointwise kernel"
    if cfg.device_type == "cpu":
        if (cfg.cell == CellKind.GRU and cfg.dtype == torch.float32 and cfg.B <= GRU_NATIVE_MAX_B
                and unavailable_reason("native", torch.device("cpu")) is None):
            mode = "fwd+bwd" if cfg.requires_grad else "inference"
            return False, (f"plain GRU on the CPU at B={cfg.B} <= {GRU_NATIVE_MAX_B} ({mode}): the native kernel "
                           "measures faster than torch's GRU at every batch of the cpu preset up to there (its gru: "
                           "records of 2026-12-06)")
        if (cfg.cell == CellKind.LSTM and cfg.dtype == torch.float32 and training and cfg.requires_grad
                and not cfg.proj and cfg.B <= LSTM_NATIVE_MAX_B
                and unavailable_reason("native", torch.device("cpu")) is None):
            return False, (f"plain LSTM training on the CPU at B={cfg.B} <= {LSTM_NATIVE_MAX_B}: the native "
                           "kernel measures faster than torch's LSTM fwd+bwd at every batch of the cpu preset up to "
                           "there (its records of 2026-12-06 and 2026-12-07, runs 9f6256d to 6125425)")
        if cfg.dtype in (torch.float32, torch.float64):
            return True, f"plain {rnn} on the CPU: torch's own (oneDNN) measures at least as fast"
        return False, f"torch's CPU {rnn} is not the measured path for {cfg.dtype}"
    if cfg.device_type == "cuda":
        mode = "fwd+bwd" if cfg.requires_grad else "fwd"
        rec = evidence.faster_than_cudnn(cfg.arch, str(cfg.dtype).replace("torch.", ""), cfg.B, cfg.H, mode) \
            if cfg.cell == CellKind.LSTM else None
        if rec is not None:
            return False, (f"a committed measurement on {rec.get('gpu', cfg.arch)} has {rec['backend']} faster "
                           f"than cuDNN at B={cfg.B}, H={cfg.H} ({rec['source']})")
        if not training and cfg.requires_grad:
            return False, "eval mode with gradients: cuDNN has no backward in eval mode"
        return True, (f"plain {rnn} on the GPU: cuDNN, since no committed measurement on {cfg.arch or 'this GPU'} "
                      f"shows a fused design faster at B={cfg.B}, H={cfg.H}, {cfg.dtype} ({mode})")
    return False, f"torch's {rnn} is not used on {cfg.device_type}"


def _fused(name: str, cfg: Config, op: str, autocast: Optional[torch.dtype]) -> Decision:
    """The backend that runs ``op`` ("recurrence" or "cell") for this configuration, and the
    dtype it runs in: cfg.dtype; under autocast (cfg.dtype the autocast dtype) that dtype
    where the backend keeps its cell state in float32 and serves it, else float32 (the first
    candidate serving either wins)."""
    passed = []
    for n in candidates(name, cfg)[0]:
        why = unavailable_reason(n, torch.device(cfg.device_type))
        if why is None:
            be = backends.get(n)
            dtypes = [cfg.dtype] if not autocast else (
                [cfg.dtype, torch.float32] if be.autocast_native else [torch.float32])
            whys = [_why_not(be, cfg if dt == cfg.dtype else dataclasses.replace(cfg, dtype=dt), op) for dt in dtypes]
            for dt, w in zip(dtypes, whys):
                if w is None:
                    if cfg.device_type == "cuda" and be.fingerprint() is not None:
                        _warn_unvalidated(n, cfg.arch)
                    return Decision(aten=False, backend=be, dtype=dt, autocast=autocast)
            why = whys[0]
        passed.append((n, why))
    if len(passed) == 1:
        n, why = passed[0]
        raise BackendError(f"backend={n!r} cannot run this {op}: {why}")
    raise BackendError(  # pragma: no cover - reference always serves
        f"no backend can run this {op}: " + "; ".join(f"{n}: {w}" for n, w in passed))


_WARNED: set = set()


def _warn_unvalidated(name: str, arch: str) -> None:
    """Say once per backend and GPU class that fused kernels run where their GPU tests have not
    passed with the installed kernels (what auto does there: it runs them, fastest first)."""
    state = gpu_status(name, arch)
    if state == "validated" or (name, arch) in _WARNED:
        return
    _WARNED.add((name, arch))
    why = "at an earlier version of its kernels only" if state == "stale" else "never"
    warnings.warn(f"fusedrnn: the {name} kernels run on this {arch or 'GPU'} although their GPU tests have passed "
                  f"there {why}; results are not yet verified on this GPU class (fusedrnn.explain says which rule "
                  "chose; FUSEDRNN_BACKEND=reference runs the plain-PyTorch oracle instead)", stacklevel=2)


def _decide(kind: str, op: str, name: str, cfg: Config, autocast: Optional[torch.dtype], regularized: bool,
            training: bool) -> Decision:
    """The uncached decision (kind "op" for a direct op call: no module rule)."""
    try:
        if kind != "op" and module_rule(kind, name, cfg, regularized or autocast is not None, training)[0]:
            return ATEN
        return _fused(name, cfg, op, autocast)
    except BackendError as e:
        if kind == "op":
            raise
        return Decision(aten=False, error=str(e))  # a module raises it after its argument checks


# ---- the one cache -----------------------------------------------------------------------

_CACHE: dict = {}


def decide(kind: str, op: str, name: str, cfg: Config, autocast: Optional[torch.dtype] = None,
           regularized: bool = False, training: bool = True) -> Decision:
    """The decision for one call.

    kind: "rnn" (an LSTM or GRU module) or "cell" (a module call: the module rules apply first; a failure comes
    back as ``Decision.error``, which the module raises after its argument checks), or "op"
    (a direct op call: BackendError at once).  op: the fused op, "recurrence" or "cell".
    cfg: the configuration of the call's first recurrence, its dtype the autocast dtype
    under autocast (``autocast``).  regularized: an option torch's module lacks is active.
    """
    if exporting():
        return export_decision(kind, name, cfg, op, autocast, regularized)
    if torch.compiler.is_compiling():
        return _traced(kind, op, name, cfg, autocast, regularized, training)
    return _cached(kind, op, name, cfg, autocast, regularized, training)


def _cached(kind, op, name, cfg, autocast, regularized, training) -> Decision:
    # no backend decides on the sequence length: T = 0 in every key
    key = (kind, op, name, tuple(map(os.environ.get, DECISION_ENV)),
           dataclasses.replace(cfg, T=0) if cfg.T else cfg, autocast, regularized, training)
    d = _CACHE.get(key)
    if d is None:
        d = _CACHE[key] = _decide(kind, op, name, cfg, autocast, regularized, training)
    return d


def decide_module(kind: str, op: str, name: str, device: torch.device, dtype: torch.dtype,
                  autocast: Optional[torch.dtype], regularized: bool, training: bool, requires_grad: bool, B: int,
                  H: int, R: int, proj: bool, mask: int, norm: int, lengths: bool, zoneout: bool,
                  cell: CellKind = CellKind.LSTM) -> Decision:
    """:func:`decide` for a module call, from the plain facts of its first recurrence (MaskMode /
    NormMode values): every call of an LSTM or a cell pays this, so a decision already taken
    costs one tuple and one dict lookup in the same cache; the Config is built only on a miss
    (and under export or torch.compile, which decide as :func:`decide` does)."""
    if not (exporting() or torch.compiler.is_compiling()):
        key = (kind, op, name, tuple(map(os.environ.get, DECISION_ENV)), device, dtype, autocast, regularized,
               training, requires_grad, B, H, R, proj, mask, norm, lengths, zoneout, cell)
        d = _CACHE.get(key)
        if d is not None:
            return d
    cfg = Config.build(device, autocast or dtype, 0, B, H, R, proj=proj, mask=mask, lengths=lengths, norm=norm,
                       requires_grad=requires_grad, zoneout=zoneout, cell=cell)
    if exporting() or torch.compiler.is_compiling():
        return decide(kind, op, name, cfg, autocast, regularized, training)
    d = _CACHE[key] = _decide(kind, op, name, cfg, autocast, regularized, training)
    return d


def decide_op(name: str, cfg: Config, op: str = "recurrence", autocast: Optional[torch.dtype] = None) -> Decision:
    """The fused decision of one direct op call (cfg.dtype the data dtype, or the autocast dtype)."""
    return decide("op", op, name, cfg, autocast)


# ---- under torch.compile -----------------------------------------------------------------

# operator.index specialises a symbolic int under Dynamo (int() would keep it symbolic).
_PLAIN = {"int": operator.index, "bool": lambda v: True if v else False}
_FIELDS = dataclasses.fields(Config)


def _traced(kind, op, name, cfg, autocast, regularized, training) -> Decision:
    """The decision as a trace-time constant: plain Python values in (the configuration's
    fields, specialised), plain values out (the backend's name and the dtype), so that
    Dynamo guards on the inputs and inlines the result."""
    fields = tuple(0 if f.name == "T" else _PLAIN.get(f.type, lambda v: v)(getattr(cfg, f.name)) for f in _FIELDS)
    aten, be, dtype, error = _decide_constant(kind, op, name, fields, autocast, True if regularized else False,
                                              True if training else False)
    if aten:
        return ATEN
    if error:
        return Decision(aten=False, error=error)
    return Decision(aten=False, backend=backends.get(be), dtype=dtype, autocast=autocast)


@trace_constant
def _decide_constant(kind, op, name, fields, autocast, regularized, training) -> tuple:
    f = {f.name: v for f, v in zip(_FIELDS, fields)}
    cfg = Config.build(f.pop("device_type"), f.pop("dtype"), *(f.pop(k) for k in ("T", "B", "H", "R")), **f)
    if kind == "rnn" and requested(name) == "aten":
        raise BackendError(f"backend='aten' runs torch's own {cfg.cell.name}, which torch.compile cannot trace; "
                           "use backend='auto' or a fused backend")
    # torch.compile cannot trace torch's LSTM (Dynamo refuses nn.LSTM, and its CPU kernel is not
    # traceable): the fused ops run the whole LSTM, so a plain fullgraph compile works.  torch's
    # cell traces, and keeps its rule.
    d = _cached("op" if kind == "rnn" else kind, op, name, cfg, autocast, regularized, training)
    return d.aten, (d.backend.name if d.backend is not None else ""), d.dtype, d.error


# ---- under export ------------------------------------------------------------------------


def exporting() -> bool:
    """Whether the call is being captured for deployment: torch.export (and the ONNX exporter
    built on it) or torch.jit tracing (the TorchScript ONNX exporter)."""
    return bool(torch.compiler.is_exporting() or torch.jit.is_tracing())


def export_decision(kind: str, name: str, cfg: Config, op: str, autocast: Optional[torch.dtype],
                    regularized: bool) -> Decision:
    """The decision of a call being exported: standard ops only, so that the program runs
    without fusedrnn._C (AOT runtimes, ONNX).  A configuration torch's own module computes
    (no batch norm, no projection for the LSTM: ONNX's LSTM op has none) runs as torch's
    module, which exports to aten.lstm and ONNX's LSTM op; any other runs the reference
    backend, whose plain PyTorch ops unroll over the steps.  backend='reference' is kept as
    asked."""
    if kind != "op" and requested(name) != "reference" and not (regularized or autocast):
        if kind == "cell" or not cfg.proj:  # (a GRU has no projection)
            return ATEN
    return _fused("reference", cfg, op, autocast)


__all__ = ["ATEN", "DECISION_ENV", "Decision", "MODULE_ONLY", "PREFERENCE", "available_backends", "candidates",
           "check_backend_name", "decide", "decide_module", "decide_op", "explain_config", "export_decision", "exporting", "gpu_status",
           "module_rule", "requested", "unavailable_reason"]
