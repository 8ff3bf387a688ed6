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
from ..backends.base import Backend, BackendError, Config

# Backends that run whole fusedrnn.LSTM modules rather than one recurrence: "aten" is
# torch's own LSTM (oneDNN on CPU), which "auto" uses on the CPU for the configurations it
# can run (no recurrent dropout, variational masks or batch norm) because it measures at
# least as fast there (benchmarks/NOTES.md).
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


def module_backend(name: str, device: torch.device, dtype: torch.dtype, regularized: bool) -> Optional[str]:
    """"aten" when a whole fusedrnn.LSTM should run as torch's own LSTM, else None.

    Explicit backend="aten" on a regularized module raises BackendError."""
    regularized = True if regularized else False  # a plain bool under torch.compile (see resolve)
    return _module_backend(name, torch.device(device).type, dtype, regularized) or None


@torch.compiler.assume_constant_result
def _module_backend(name: str, device_type: str, dtype: torch.dtype, regularized: bool) -> str:
    name = _requested(name)
    if name == "aten":
        if regularized:
            raise BackendError("backend='aten' (torch's own LSTM) cannot run recurrent dropout, "
                               "variational masks or batch norm")
        return "aten"
    if name == "auto" and device_type == "cpu" and dtype in (torch.float32, torch.float64) and not regularized:
        return "aten"
    return ""


def explain_config(name: str, cfg: Config, op: str = "recurrence") -> list[tuple[str, Optional[str]]]:
    """For each candidate backend, None if it would run this configuration, else why not.

    The first entry with None is the one :func:`resolve` picks.
    """
    name = _requested(name)
    device = torch.device(cfg.device_type)
    candidates = PREFERENCE.get(cfg.device_type, ("reference",)) if name == "auto" else (name,)
    out = []
    for n in candidates:
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


__all__ = ["MODULE_ONLY", "PREFERENCE", "available_backends", "check_backend_name", "explain_config",
           "module_backend", "resolve"]
