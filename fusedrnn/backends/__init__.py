"""Backends of the recurrence op.  Each implements :class:`~fusedrnn.backends.base.Backend`.

- ``reference``: plain PyTorch, the oracle (:mod:`.reference`);
- ``native``: the C++ CPU kernels of fusedrnn._C; ``cuda``: its CUDA kernels (:mod:`.native`);
- ``triton``: Triton kernels (:mod:`.triton`).
"""

from __future__ import annotations

import importlib
from typing import Optional

from .base import Backend, BackendError

NAMES = ("reference", "native", "cuda", "triton")

_MODULES = {"reference": (".reference", "BACKEND"), "native": (".native", "NATIVE"),
            "cuda": (".native", "CUDA"), "triton": (".triton", "BACKEND")}
_CACHE: dict[str, Backend] = {}
_IMPORT_ERRORS: dict[str, str] = {}


def get(name: str) -> Optional[Backend]:
    """The backend object of a known name, or None if its module cannot be imported."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {('auto',) + NAMES}, got {name!r}")
    if name not in _CACHE and name not in _IMPORT_ERRORS:
        mod, attr = _MODULES[name]
        try:
            _CACHE[name] = getattr(importlib.import_module(mod, __name__), attr)
        except (ImportError, AttributeError) as e:
            _IMPORT_ERRORS[name] = f"{type(e).__name__}: {e}"
    return _CACHE.get(name)


def import_error(name: str) -> Optional[str]:
    get(name)
    return _IMPORT_ERRORS.get(name)


__all__ = ["Backend", "BackendError", "NAMES", "get", "import_error"]
