"""fusedrnn.explain: which backend runs each layer of a model, and why the others do not."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.dispatch import explain_config, module_backend
from .cell import LSTMCell
from .lstm import LSTM


def explain(module: nn.Module, input) -> str:
    """A report, one block per fusedrnn.LSTM inside ``module``, of the backend that would
    run each layer and direction for ``input`` (the input of that LSTM, or of the model
    when it is an LSTM itself), with the reason each faster backend was passed over.
    Nothing runs."""
    lines = []
    lstms = [(n, m) for n, m in module.named_modules() if isinstance(m, LSTM)]
    for name, m in lstms:
        lines.append(f"{name or type(module).__name__}: {m!r}")
        ref = input.data if hasattr(input, "batch_sizes") else input
        if module_backend(m.backend, ref.device, ref.dtype, m.regularized()) == "aten":
            lines.append("  all layers: aten (torch's own LSTM: no regularizer is active, and on the CPU "
                         "it measures at least as fast)")
            continue
        for suffix, cfg in m.layer_configs(input):
            decisions = explain_config(m.backend, cfg)
            chosen = next((n for n, why in decisions if why is None), None)
            lines.append(f"  layer{suffix}: {chosen or 'none'}"
                         f"  [T={cfg.T} B={cfg.B} H={cfg.H} R={cfg.R} {cfg.dtype} {cfg.device_type}"
                         f" mask={cfg.mask} bn={cfg.bn} lengths={cfg.lengths} reverse={cfg.reverse}]")
            for n, why in decisions:
                if why is not None:
                    lines.append(f"    not {n}: {why}")
                if n == chosen:
                    break
            if chosen == "cuda":
                from ..backends.native import cuda_design

                device = next(m.parameters()).device
                lines.append(f"    design: {cuda_design(cfg, device, cfg.requires_grad)}")
    for name, m in module.named_modules():
        if isinstance(m, LSTMCell):
            lines.append(f"{name or type(module).__name__}: {m!r} (cell, backend={m.backend})")
    return "\n".join(lines) if lines else "no fusedrnn modules"
