"""The backends of the op contract (:mod:`fusedrnn.core.contract`), and their registry.

- ``reference``: plain PyTorch, the oracle (:mod:`.reference`);
- ``native``: the C++ CPU kernels of fusedrnn._C (:mod:`.cpu`);
- ``cuda``: its CUDA kernels (:mod:`.cuda`);
- ``triton``: Triton kernels (:mod:`.triton`).

A backend module is imported when it is first asked for, so a missing toolchain (no
triton, no fusedrnn._C) only makes that backend unavailable.
"""

from __future__ import annotations

import importlib
from typing import Optional

from ..core.contract import Backend, BackendError

NAMES = ("reference", "native", "cuda", "triton")

_MODULES = {"reference": ".reference", "native": ".cpu", "cuda": ".cuda", "triton": ".triton"}
_CACHE: dict[str, Backend] = {}
_IMPORT_ERRORS: dict[str, str] = {}


def get(name: str) -> Optional[Backend]:
    """The backend object of a known name, or None if its module cannot be imported."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {('auto',) + NAMES}, got {name!r}")
    if name not in _CACHE and name not in _IMPORT_ERRORS:
        try:
            _CACHE[name] = importlib.import_module(_MODULES[name], __name__).BACKEND
        except (ImportError, AttributeError) as e:
            _IMPORT_ERRORS[name] = f"{type(e).__name__}: {e}"
    return _CACHE.get(name)


def native_op(op: str) -> bool:
    """Whether the native backend (fusedrnn._C) has a CPU kernel for fusedrnn::<op>: the
    helper ops outside the op contract (DropConnect's masked weight) ask here."""
    be = get("native")
    return be is not None and be.has_op(op)


def import_error(name: str) -> Optional[str]:
    get(name)
    return _IMPORT_ERRORS.get(name)


__all__ = ["Backend", "BackendError", "NAMES", "get", "import_error"]
