"""The training loop the experiments share: one optimizer step, and Adam on a task with
periodic evaluation."""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   clip: Optional[float]) -> None:
    """One training step of every experiment: zero the gradients, backpropagate ``loss``,
    clip the gradient norm to ``clip`` (0 or None: no clipping) and step ``opt``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def train_on_task(ctx, model: torch.nn.Module, task, objective, metric: str,
                  evaluate: Callable[[], float]) -> tuple[dict, float]:
    """Train ``model`` with Adam (``lr``) on ``task.train_batch(step, batch_size)`` for ``steps``
    steps of ``objective``'s loss per counted element (clipped at ``clip``), the settings taken
    from ``ctx.cfg``.  Every ``eval_every`` steps and at the end, record the step, the mean
    training loss since the last record and ``evaluate()`` (under ``metric``).
    Returns (history, training seconds)."""
    c = ctx.cfg
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"])
    hist = {"step": [], "train_loss": [], metric: []}
    loss_sum, n = 0.0, 0
    t0 = time.time()
    for step in range(1, c["steps"] + 1):
        b = {k: v.to(ctx.device) for k, v in task.train_batch(step, c["batch_size"]).items()}
        loss = objective.loss(model, b) / objective.count(b)
        optimizer_step(model, opt, loss, c["clip"])
        loss_sum += loss.item()
        n += 1
        if step % c["eval_every"] == 0 or step == c["steps"]:
            hist["step"].append(step)
            hist["train_loss"].append(loss_sum / n)
            hist[metric].append(evaluate())
            loss_sum, n = 0.0, 0
    return hist, time.time() - t0


__all__ = ["optimizer_step", "train_on_task"]
