"""The triton backend of the layer recurrence op (see recurrence.py, kernels.py, config.py).

Exports ``BACKEND`` (the :class:`~fusedrnn.backends.base.Backend`) and
:func:`kernel_configs` (every kernel and constexpr configuration the dispatcher can
choose, for the ahead-of-time compile gate).
"""

from .recurrence import BACKEND, INTERPRET, TritonBackend, recurrence  # noqa: F401
from .gate import kernel_configs  # noqa: F401

__all__ = ["BACKEND", "INTERPRET", "TritonBackend", "kernel_configs", "recurrence"]
