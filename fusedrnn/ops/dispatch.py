"""Which backend serves a configuration (the registry is :mod:`fusedrnn.backends`).

``backend="auto"`` (the default everywhere) takes the first backend of the device's
preference list that is available and supports the configuration; on a GPU, backends whose
GPU tests have passed on real hardware of that GPU class come first (:mod:`.evidence`).
The environment variable ``FUSEDRNN_BACKEND`` overrides "auto".  An explicitly named
backend that is unavailable, or cannot serve the configuration, raises
:class:`BackendError` naming what is missing; nothing falls back silently.
:func:`explain_config` reports the decision.

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
from . import evidence
from .contract import Backend, BackendError, Config

# Backends that run whole fusedrnn.LSTM / LSTMCell modules rather than one op: "aten" is
# torch's own LSTM / LSTMCell (oneDNN on the CPU, cuDNN on a GPU); see fusedrnn.ops.plan.
MODULE_ONLY = ("aten",)

# Fastest first, per device type.
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


def candidates(name: str, cfg: Config) -> tuple[tuple[str, ...], str]:
    """The backends to try, in order, for a configuration, and the rule that ordered them."""
    name = requested(name)
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


def _why_not(be: Backend, cfg: Config, op: str) -> Optional[str]:
    return be.unsupported_reason(cfg) if op == "recurrence" else be.cell_unsupported_reason(cfg)


def _candidates_with_reasons(name: str, cfg: Config, op: str):
    """(name, backend or None when unavailable, why it cannot run cfg or None) in order."""
    device = torch.device(cfg.device_type)
    for n in candidates(name, cfg)[0]:
        why = unavailable_reason(n, device)
        be = backends.get(n) if why is None else None
        yield n, be, (why if be is None else _why_not(be, cfg, op))


def explain_config(name: str, cfg: Config, op: str = "recurrence") -> list[tuple[str, Optional[str]]]:
    """For each candidate backend, None if it would run this configuration, else why not.

    The first entry with None is the one :func:`resolve` picks (outside autocast)."""
    return [(n, why) for n, _, why in _candidates_with_reasons(name, cfg, op)]


def resolve(name: str, cfg: Config, op: str = "recurrence",
            autocast: Optional[torch.dtype] = None) -> tuple[Backend, torch.dtype]:
    """The backend that runs ``op`` ("recurrence" or "cell") for this configuration, and the
    dtype it runs in: cfg.dtype; under autocast (cfg.dtype the autocast dtype) that dtype
    where the backend serves it, else float32 (the first candidate serving either wins).

    Decisions depend only on (requested backend, configuration, op, autocast) and are
    cached: a decoder stepping a cell pays the dispatch once, not at every step."""
    # Plain Python values: under torch.compile a symbolic size or flag (e.g. a float module
    # option compared with 0) is specialised here, which Dynamo guards.  No backend decides
    # on the sequence length, so T is left out: one compiled graph serves every length.
    fields = tuple(-1 if f.name == "T" else _PLAIN.get(f.type, _same)(getattr(cfg, f.name))
                   for f in _CONFIG_FIELDS)
    be, dtype = _resolve_name(name, op, fields, "" if autocast is None else str(autocast)).split("|")
    return backends.get(be), getattr(torch, dtype)


# Environment switches a backend reads when it decides (fusedrnn.backends.cuda.UNVERIFIED_ENV):
# part of every cached decision's key, so flipping one (the GPU tests and the sanitizer pass do)
# is not answered from the cache.  FUSEDRNN_BACKEND enters through requested().
DECISION_ENV = ("FUSEDRNN_CUDA_UNVERIFIED",)


def decision_env() -> tuple:
    return tuple(os.environ.get(k) for k in DECISION_ENV)


def _same(v):
    return v


# operator.index specialises a symbolic int under Dynamo (int() would keep it symbolic).
_PLAIN = {"int": operator.index, "bool": lambda v: True if v else False}
_CONFIG_FIELDS = dataclasses.fields(Config)


@torch.compiler.assume_constant_result
def _resolve_name(name: str, op: str, fields: tuple, autocast: str) -> str:
    # the environment is read in here, where Dynamo does not trace (like FUSEDRNN_BACKEND in
    # requested()): under torch.compile, when the graph is traced
    return _resolve(requested(name), Config(*fields), op, autocast, decision_env())


@functools.lru_cache(maxsize=4096)
def _resolve(name: str, cfg: Config, op: str, autocast: str, env: tuple) -> str:
    """resolve's decision (env: decision_env(), a key only)."""
    decisions = []
    for n, be, why in _candidates_with_reasons(name, cfg, op):
        if be is not None:
            # under autocast a 16-bit recurrence only where the backend keeps its cell state and
            # accumulation in float32; elsewhere float32 (a 16-bit c would be rounded every step)
            dtypes = [cfg.dtype] if not autocast else (
                [cfg.dtype, torch.float32] if be.autocast_native else [torch.float32])
            for dt in dtypes:
                if _why_not(be, dataclasses.replace(cfg, dtype=dt), op) is None:
                    return f"{n}|{str(dt).replace('torch.', '')}"
        decisions.append((n, why))
    if len(decisions) == 1:
        n, why = decisions[0]
        raise BackendError(f"backend={n!r} cannot run this {op}: {why}")
    raise BackendError(  # pragma: no cover - reference always serves
        f"no backend can run this {op}: " + "; ".join(f"{n}: {w}" for n, w in decisions))


__all__ = ["MODULE_ONLY", "PREFERENCE", "available_backends", "candidates", "check_backend_name", "explain_config",
           "requested", "resolve", "unavailable_reason"]
