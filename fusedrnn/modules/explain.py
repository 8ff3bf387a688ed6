"""fusedrnn.explain: which backend runs each layer of a model, which rule chose it, and why
the backends before it were passed over."""

from __future__ import annotations

import dataclasses
import os

from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .. import ops
from ..ops.decision import candidates, explain_config, module_rule
from .cell import SequenceCell
from .rnn import FusedRNN


def explain(module: nn.Module, input) -> str:
    """A report, one block per fusedrnn.LSTM / GRU inside ``module``, of the backend that would
    run each layer and direction for ``input`` (the input of that module, or of the model
    when it is one itself) in the module's current mode and grad mode, the rule that
    chose it, and the reason each backend before it was passed over.  Nothing runs."""
    lines = []
    lstms = [(n, m) for n, m in module.named_modules() if isinstance(m, FusedRNN)]
    for name, m in lstms:
        lines.append(f"{name or type(module).__name__}: {m!r}")
        ref = input.data if isinstance(input, PackedSequence) else input
        decision = m.decide(input)  # what forward would run
        configs = m.layer_configs(input)
        dt = ops.autocast_dtype(ref)
        first = configs[0][1] if dt is None else dataclasses.replace(configs[0][1], dtype=dt)
        _, rule = module_rule("rnn", m.backend, first, m.regularized() or dt is not None, m.training)
        if decision.aten:
            lines.append(f"  all layers: aten (torch's own {m._cell.name}), rule: {rule}")
            continue
        lines.append(f"  fused layers on {decision.backend.name} in {decision.dtype}"
                     f"{f' (autocast {decision.autocast})' if decision.autocast else ''}, rule: {rule}")
        for suffix, cfg in configs:
            decisions = explain_config(m.backend, cfg)
            lines.append(f"  layer{suffix}: {decision.backend.name}"
                         f"  [T={cfg.T} B={cfg.B} H={cfg.H} R={cfg.R} {cfg.dtype} {cfg.device_type}"
                         f"{' ' + cfg.arch if cfg.arch else ''} mask={cfg.mask.name.lower()} "
                         f"norm={cfg.norm.name.lower()}{' zoneout' if cfg.zoneout else ''} "
                         f"lengths={cfg.lengths} reverse={cfg.reverse}]")
            lines.append(f"    order: {candidates(m.backend, cfg)[1]}")
            for n, why in decisions:
                if n == decision.backend.name:
                    break
                if why is not None:
                    lines.append(f"    not {n}: {why}")
            detail = decision.backend.describe(cfg, ref.device)
            if detail:
                lines.append(f"    design: {detail}")
            if m._recomputes() and cfg.norm != ops.NormMode.NONE and cfg.requires_grad:
                lines.append("    recompute: N_h's x_hat rebuilt in the backward" if decision.backend.name == "native"
                             else f"    recompute: not on {decision.backend.name}, which keeps N_h's x_hat (the "
                             "native CPU kernel has the mode)")
    for name, m in module.named_modules():
        if isinstance(m, SequenceCell):
            lines.append(f"{name or type(module).__name__}: {m!r} (cell, backend={m.backend})")
            if m.holds_sequence_state():
                lines.append("  sequence boundary: reset(), hx=None or a train()/eval() switch, else a given state "
                             "that does not descend from the state the cell returned last (the cells' rule, "
                             "docs/guide.md)")
            else:
                lines.append("  no per-sequence state in this mode: every step is decided alone")
    if os.environ.get("FUSEDRNN_BACKEND", "").strip() not in ("", "auto"):
        lines.append(f"(FUSEDRNN_BACKEND={os.environ['FUSEDRNN_BACKEND'].strip()} overrides backend='auto')")
    return "\n".join(lines) if lines else "no fusedrnn modules"


__all__ = ["explain"]
