"""Backend choice for the recurrence and cell ops.

``backend="auto"`` (the default everywhere) takes the first backend of the device's
preference list that is available and supports the configuration; the environment
variable ``FUSEDRNN_BACKEND`` overrides "auto".  An explicitly named backend that is
unavailable, or cannot serve the configuration, raises :class:`BackendError` naming what
is missing; nothing falls back silently.  :func:`explain_config` reports the decision.
"""

from __future__ import annotations

import functools
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
    name = _requested(name)
    if name == "aten":
        if regularized:
            raise BackendError("backend='aten' (torch's own LSTM) cannot run recurrent dropout, "
                               "variational masks or batch norm")
        return "aten"
    if name == "auto" and device.type == "cpu" and dtype in (torch.float32, torch.float64) and not regularized:
        return "aten"
    return None


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
    return _resolve(_requested(name), cfg, op)


@functools.lru_cache(maxsize=4096)
def _resolve(name: str, cfg: Config, op: str) -> Backend:
    decisions = explain_config(name, cfg, op)
    for n, why in decisions:
        if why is None:
            return backends.get(n)
    if len(decisions) == 1:
        n, why = decisions[0]
        raise BackendError(f"backend={n!r} cannot run this {op}: {why}")
    raise BackendError(  # pragma: no cover - reference always serves
        f"no backend can run this {op}: " + "; ".join(f"{n}: {w}" for n, w in decisions)
    )


__all__ = ["MODULE_ONLY", "PREFERENCE", "available_backends", "check_backend_name", "explain_config",
           "module_backend", "resolve"]
