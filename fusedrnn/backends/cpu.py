"""The ``native`` backend: the C++ CPU kernels of fusedrnn._C (csrc/cpu/), float32 and
float64, the LSTM and the GRU.  The input projection is one GEMM over all steps (fusedrnn::linear); the recurrence
runs one GEMM and one fused pointwise pass per step (float32 GEMMs on oneDNN with the weight
reordered once per call, csrc/cpu/gemm.h); BN_x one fused pass over the sequence; the cell
step one fused pass (fusedrnn.backends.compiled).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..core.contract import CellKind, Config
from .compiled import CompiledBackend

SERVED = (torch.float32, torch.float64)


class CPUBackend(CompiledBackend):
    cells = (CellKind.LSTM, CellKind.GRU)

    def __init__(self):
        super().__init__("native", "cpu", "CPU")

    def unsupported_reason(self, cfg: Config) -> Optional[str]:
        if cfg.dtype not in SERVED:
            return f"the native CPU kernel takes float32 or float64, got {cfg.dtype}"
        return super().unsupported_reason(cfg)

    def project(self, cfg, x, weight, bias):
        from .compiled import linear  # registered only when fusedrnn._C loaded

        return linear.forward(x, weight, bias)


BACKEND = CPUBackend()
