"""Backend choice for the recurrence and cell ops.

``backend="auto"`` (the default everywhere) takes the first backend of the device's
preference list that is available and supports the configuration; the environment
variable ``FUSEDRNN_BACKEND`` overrides "auto".  An explicitly named backend that is
unavailable, or cannot serve the configuration, raises :class:`BackendError` naming what
is missing; nothing falls back silently.  :func:`explain_config` reports the decision.

Under torch.compile the decisions are taken while tracing, as constants
(``torch.compiler.assume_constant_result``): they depend only on Python values (the
requested name, the device type, the dtype, the options and the sizes), which Dynamo
guards on, so the traced graph holds the chosen backend's op with no graph break.  The
batch size is specialised (a new batch size recompiles), the sequence length is not
(backends must not decide on ``Config.T``), and ``FUSEDRNN_BACKEND`` is read when a graph
is traced.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
from typing import Optional, Union

import torch

from .. import backends
from ..backends.base import Backend, BackendError, Config, device_arch
from . import evidence

# Backends that run whole fusedrnn.LSTM modules rather than one recurrence: "aten" is
# torch's own LSTM / LSTMCell (oneDNN on the CPU, cuDNN on a GPU); see :func:`module_plan`.
MODULE_ONLY = ("aten",)

# Fastest first, per device type.  On a GPU, backends validated on real hardware of that
# GPU class come first (:func:`candidates`).
PREFERENCE = {
    "cpu": ("native", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}


def _device(device: Union[str, torch.device, None]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_backend_name(name: str) -> str:
    """Validate a backend argument; raises ValueError naming the argument."""
    known = ("auto",) + backends.NAMES + MODULE_ONLY
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"backend must be one of {known}, got {name!r}")
    return name


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    if name in MODULE_ONLY:
        return (f"backend {name!r} (torch's own LSTM) runs whole fusedrnn.LSTM modules without "
                "regularizers, not single recurrences")
    be = backends.get(name)
    if be is None:
        return f"backend {name!r} cannot be imported: {backends.import_error(name)}"
    return be.unavailable_reason(device)


def available_backends(device: Union[str, torch.device, None] = None) -> list[str]:
    """Backends that can run on ``device`` (default: CUDA if present, else CPU), fastest first."""
    dev = _device(device)
    order = PREFERENCE.get(dev.type, ("reference",))
    return [n for n in order if unavailable_reason(n, dev) is None]


def _requested(name: str) -> str:
    check_backend_name(name)
    if name == "auto":
        env = os.environ.get("FUSEDRNN_BACKEND", "").strip()
        if env and env != "auto":
            try:
                return check_backend_name(env)
            except ValueError as e:
                raise ValueError(f"FUSEDRNN_BACKEND: {e}") from None
    return name


def module_plan(kind: str, name: str, device: torch.device, dtype: torch.dtype, regularized: bool,
                training: bool, needs_grad: bool, B: int = 0, H: int = 0) -> bool:
    """Whether a whole fusedrnn.LSTM (kind "lstm") or LSTMCell ("cell") call runs as torch's
    own module ("aten") instead of the fused ops.  Cached per configuration (this runs on
    every module call: plain positional arguments, one dict lookup).  :func:`module_rule`
    says which rule decided; explicit backend="aten" on a configuration torch cannot run
    raises BackendError.  B and H matter on a GPU only (the CPU rule ignores the shape).

    ``regularized``: an option torch lacks is active in this call (recurrent dropout,
    variational masks, batch norm, an explicit cell mask, or autocast, under which the fused
    path keeps the cell state in float32)."""
    if torch.compiler.is_compiling():
        return _compiled_plan(kind, name, device.type, dtype, True if regularized else False)
    key = (kind, name, os.environ.get("FUSEDRNN_BACKEND"), device, dtype, regularized, training, needs_grad, B, H)
    aten = _PLANS.get(key)
    if aten is None:
        aten = _PLANS[key] = module_rule(kind, name, device.type, dtype, bool(regularized), bool(training),
                                         bool(needs_grad), B, H, _arch(device))[0]
    return aten


_PLANS: dict = {}


def _arch(device: torch.device) -> str:
    return "" if device.type != "cuda" else device_arch(device)


@torch.compiler.assume_constant_result  # a trace-time constant (see the module docstring)
def _compiled_plan(kind: str, name: str, device_type: str, dtype: torch.dtype, regularized: bool) -> bool:
    """module_plan under torch.compile.  torch.compile cannot trace torch's LSTM (Dynamo
    refuses nn.LSTM, and the CPU kernel is not traceable): the fused ops run the whole LSTM,
    so a plain fullgraph compile works.  torch's cell traces, and keeps its rule."""
    if kind == "lstm":
        if _requested(name) == "aten":
            raise BackendError("backend='aten' runs torch's own LSTM, which torch.compile cannot trace; "
                               "use backend='auto' or a fused backend")
        return False
    return module_rule(kind, name, device_type, dtype, regularized, True, True, 0, 0, "")[0]


def module_rule(kind: str, name: str, device_type: str, dtype: torch.dtype, regularized: bool, training: bool,
                needs_grad: bool, B: int, H: int, arch: str) -> tuple[bool, str]:
    """(torch's own module runs, the rule that decided), for :func:`module_plan` and explain()."""
    name = _requested(name)
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


def candidates(name: str, cfg: Config) -> tuple[tuple[str, ...], str]:
    """The backends to try, in order, for a configuration, and the rule that ordered them."""
    name = _requested(name)
    if name != "auto":
        return (name,), f"backend={name!r} was requested"
    order = PREFERENCE.get(cfg.device_type, ("reference",))
    if cfg.device_type != "cuda":
        return order, f"the {cfg.device_type} preference order (fastest first)"
    proven = tuple(n for n in order if evidence.validated(n, cfg.arch))
    if not proven:
        return order, (f"no backend has passed its GPU tests on {cfg.arch or 'this GPU'}: the default order "
                       "(fastest first by design)")
    rest = tuple(n for n in order if n not in proven)
    return proven + rest, (f"{', '.join(proven)} passed its GPU tests on real {cfg.arch} hardware: it comes "
                           "before backends that have not")


def explain_config(name: str, cfg: Config, op: str = "recurrence") -> list[tuple[str, Optional[str]]]:
    """For each candidate backend, None if it would run this configuration, else why not.

    The first entry with None is the one :func:`resolve` picks.
    """
    device = torch.device(cfg.device_type)
    out = []
    for n in candidates(name, cfg)[0]:
        why = unavailable_reason(n, device)
        if why is None:
            be = backends.get(n)
            why = be.unsupported_reason(cfg) if op == "recurrence" else be.cell_unsupported_reason(cfg)
        out.append((n, why))
    return out


def resolve(name: str, cfg: Config, op: str = "recurrence") -> Backend:
    """The backend that runs ``op`` ("recurrence" or "cell") for this configuration.

    Decisions depend only on (requested backend, configuration, op) and are cached: a
    decoder stepping a cell pays the dispatch once, not at every step."""
    # Plain Python values: under torch.compile a symbolic size or flag (e.g. a float module
    # option compared with 0) is specialised here, which Dynamo guards.  No backend decides
    # on the sequence length, so T is left out: one compiled graph serves every length.
    fields = tuple(-1 if f.name == "T" else _PLAIN.get(f.type, _same)(getattr(cfg, f.name))
                   for f in _CONFIG_FIELDS)
    return backends.get(_resolve_name(name, op, fields))


def _same(v):
    return v


# operator.index specialises a symbolic int under Dynamo (int() would keep it symbolic).
_PLAIN = {"int": operator.index, "bool": lambda v: True if v else False}


_CONFIG_FIELDS = dataclasses.fields(Config)


@torch.compiler.assume_constant_result
def _resolve_name(name: str, op: str, fields: tuple) -> str:
    return _resolve(_requested(name), Config(*fields), op)


@functools.lru_cache(maxsize=4096)
def _resolve(name: str, cfg: Config, op: str) -> str:
    decisions = explain_config(name, cfg, op)
    for n, why in decisions:
        if why is None:
            return n
    if len(decisions) == 1:
        n, why = decisions[0]
        raise BackendError(f"backend={n!r} cannot run this {op}: {why}")
    raise BackendError(  # pragma: no cover - reference always serves
        f"no backend can run this {op}: " + "; ".join(f"{n}: {w}" for n, w in decisions)
    )


__all__ = ["MODULE_ONLY", "PREFERENCE", "available_backends", "candidates", "check_backend_name",
           "explain_config", "module_plan", "module_rule", "resolve"]
