"""fusedrnn.explain: which backend runs each layer of a model, which rule chose it, and why
the backends before it were passed over."""

from __future__ import annotations

import os

from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .. import ops
from ..backends.base import device_arch
from ..ops.dispatch import candidates, explain_config, module_rule
from .cell import LSTMCell
from .lstm import LSTM


def explain(module: nn.Module, input) -> str:
    """A report, one block per fusedrnn.LSTM inside ``module``, of the backend that would
    run each layer and direction for ``input`` (the input of that LSTM, or of the model
    when it is an LSTM itself) in the module's current mode and grad mode, the rule that
    chose it, and the reason each backend before it was passed over.  Nothing runs."""
    lines = []
    lstms = [(n, m) for n, m in module.named_modules() if isinstance(m, LSTM)]
    for name, m in lstms:
        lines.append(f"{name or type(module).__name__}: {m!r}")
        ref = input.data if isinstance(input, PackedSequence) else input
        regularized = m.regularized() or ops.autocast_dtype(ref) is not None
        aten, rule = module_rule(
            "lstm", m.backend, ref.device.type, ref.dtype, regularized, m.training, m._needs_grad(ref),
            m._batch_size(input) if ref.is_cuda else 0, m.hidden_size, device_arch(ref.device))
        if aten:
            lines.append(f"  all layers: aten (torch's own LSTM), rule: {rule}")
            continue
        lines.append(f"  fused layers, rule: {rule}")
        for suffix, cfg in m.layer_configs(input):
            decisions = explain_config(m.backend, cfg)
            chosen = next((n for n, why in decisions if why is None), None)
            lines.append(f"  layer{suffix}: {chosen or 'none'}"
                         f"  [T={cfg.T} B={cfg.B} H={cfg.H} R={cfg.R} {cfg.dtype} {cfg.device_type}"
                         f"{' ' + cfg.arch if cfg.arch else ''} mask={cfg.mask} bn={cfg.bn} "
                         f"lengths={cfg.lengths} reverse={cfg.reverse}]")
            lines.append(f"    order: {candidates(m.backend, cfg)[1]}")
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
    if os.environ.get("FUSEDRNN_BACKEND", "").strip() not in ("", "auto"):
        lines.append(f"(FUSEDRNN_BACKEND={os.environ['FUSEDRNN_BACKEND'].strip()} overrides backend='auto')")
    return "\n".join(lines) if lines else "no fusedrnn modules"


__all__ = ["explain"]
