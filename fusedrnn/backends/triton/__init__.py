"""The triton backend of the layer recurrence op.

- recurrence.py: host functions, the torch.library ops (triton_op) and the Backend;
- kernels.py: the Triton kernels (per-step and persistent designs), _helpers.py their
  building blocks;
- config.py: the resource estimate, the design heuristic and the autotuning space;
- gate.py: every kernel configuration that can be chosen, and the ahead-of-time compile
  check (``python -m fusedrnn.backends.triton.gate``);
- selfcheck.py: a quick timing against cuDNN on a GPU.

Exports ``BACKEND`` (a :class:`~fusedrnn.backends.base.Backend`) and :func:`kernel_configs`.
"""

from .recurrence import BACKEND, INTERPRET, TritonBackend, recurrence  # noqa: F401


def kernel_configs(dtype, T, B, H, R, options=None):
    """Every (kernel, signature, constexprs, num_warps, num_stages) the dispatcher and the
    autotuner can choose for this problem; see :func:`.gate.kernel_configs`."""
    from .gate import kernel_configs as _kernel_configs

    return _kernel_configs(dtype, T, B, H, R, options)


__all__ = ["BACKEND", "INTERPRET", "TritonBackend", "kernel_configs", "recurrence"]
