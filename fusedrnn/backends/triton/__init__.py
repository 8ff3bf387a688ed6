"""The triton backend of the layer recurrence op.

- backend.py: the Backend (what it serves, and the recurrence through the ops);
- ops.py: the torch.library ops (the layer-op schema of fusedrnn.core.schema);
- host.py: their host functions (buffers, tilings, launches, weight-gradient GEMMs);
- launch.py: which kernels a tiling launches (ROLES), with which constexprs and grids (shared
  with aot.py);
- config.py: the resource estimate, the design heuristic and the autotuning space (Tiling);
- kernels/: the Triton kernels, a module per design (step.py, layer_norm.py, persistent.py)
  and what they share (common.py);
- aot.py: every kernel configuration that can be chosen, compiled ahead of time for
  sm_90 / sm_80 without a GPU (``python -m fusedrnn.backends.triton.aot``).
"""

from .backend import BACKEND, TritonBackend, recurrence  # noqa: F401
from .host import INTERPRET  # noqa: F401


def kernel_configs(dtype, T, B, H, R, options=None):
    """Every (kernel, signature, constexprs, num_warps, num_stages) the dispatcher and the
    autotuner can choose for this problem; see :func:`.aot.kernel_configs`."""
    from .aot import kernel_configs as _kernel_configs

    return _kernel_configs(dtype, T, B, H, R, options)


__all__ = ["BACKEND", "INTERPRET", "TritonBackend", "kernel_configs", "recurrence"]
