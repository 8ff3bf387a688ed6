"""Experiment 2: recurrent batch norm (Cooijmans et al., arXiv 1603.09025) against a plain LSTM
on sequential digits.

Data: scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn), split
80/20 by :class:`fusedrnn.tasks.SeqDigitsTask`; the model reads an image row by row (8 steps
of 8 pixels) or pixel by pixel (64 steps of 1 pixel) and classifies it from its last hidden
state (:class:`fusedrnn.models.SequenceClassifier`).

Arms: ``lstm`` (no batch norm), ``bn-lstm`` with the batch-norm gammas at 0.1 (the paper's
and the library's initialization) and at 1.0 (the usual BN default, which the paper reports
saturates the tanh and slows learning), and ``ln-lstm``, the LayerNorm LSTM of Ba et al.
(``layer_norm=True``: no batch statistics, gains 1).  Every arm sees the same batches in the same order
(per seed) with the same optimizer settings; curves are the mean over seeds with a min-max
band.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import SequenceClassifier
from ..modules import LSTM
from ..report import pyplot
from ..tasks import SeqDigitsTask
from .run import Context
from .summary import mean_std, pm, shade
from .training import optimizer_step

NAME = "batchnorm"
TITLE = "Recurrent batch norm: BN-LSTM vs LSTM on sequential digits"
CLAIM = "recurrent batch normalization speeds up training (and its gamma must start small, 0.1 rather than 1.0)"

ARMS = {"lstm": (False, None), "bn-lstm gamma=0.1": (True, 0.1), "bn-lstm gamma=1.0": (True, 1.0),
        "ln-lstm": ("layer", None)}
COLORS = {"lstm": "tab:gray", "bn-lstm gamma=0.1": "tab:blue", "bn-lstm gamma=1.0": "tab:orange",
          "ln-lstm": "tab:green"}
MODES = {"rows": (8, 8), "pixels": (64, 1)}   # (steps, inputs per step)

PRESETS = {
    "default": dict(seeds=[0, 1, 2], modes=["rows", "pixels"], arms=list(ARMS), hidden_size=64, batch_size=64,
                    lr=3e-3, clip=5.0, steps={"rows": 1000, "pixels": 1500}, eval_every=50,
                    thresholds={"rows": 0.9, "pixels": 0.8}),
    "smoke": dict(seeds=[0], hidden_size=8, batch_size=16, steps={"rows": 4, "pixels": 4}, eval_every=2),
    "full": dict(seeds=[0, 1, 2, 3, 4], hidden_size=128, steps={"rows": 5000, "pixels": 10000}, eval_every=100),
}


def build(arm: str, mode: str, hidden_size: int, device) -> nn.Module:
    bn, gamma = ARMS[arm]
    model = SequenceClassifier(10, input_size=MODES[mode][1], hidden_size=hidden_size, batch_norm=bn is True)
    if bn == "layer":  # the same model with the LayerNorm LSTM in place of its LSTM (same weights)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, LSTM):
                    ln = LSTM(child.input_size, child.hidden_size, child.num_layers, batch_first=child.batch_first,
                              bidirectional=child.bidirectional, dropout=child.dropout,
                              recurrent_dropout=child.recurrent_dropout, variational=child.variational,
                              backend=child.backend, layer_norm=True)
                    ln.load_state_dict(child.state_dict(), strict=False)
                    setattr(parent, name, ln)
    elif bn:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.split(".")[-1].startswith(("bn_x_weight", "bn_h_weight", "bn_c_weight")):
                    p.fill_(gamma)
    return model.to(device)


def as_mode(x: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, 8, 8] images -> [B, T, I] for the mode (row-major pixel order)."""
    T, I = MODES[mode]
    return x.reshape(x.shape[0], T, I)


@torch.no_grad()
def evaluate(model, batches, mode, device) -> tuple[float, float]:
    model.eval()
    right = n = 0
    loss = 0.0
    for b in batches:
        logits = model(as_mode(b["x"], mode).to(device))
        y = b["y"].to(device)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        right += (logits.argmax(-1) == y).sum().item()
        n += y.numel()
    model.train()
    return right / n, loss / n


def train_arm(ctx: Context, mode: str, arm: str, seed: int) -> dict:
    c = ctx.cfg
    steps = c["steps"][mode]
    task = SeqDigitsTask(seed=seed)
    test = task.eval_batches(256)
    torch.manual_seed(seed)
    model = build(arm, mode, c["hidden_size"], ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"])
    hist = {"step": [], "train_loss": [], "test_acc": [], "test_loss": []}
    loss_sum, loss_n = 0.0, 0
    t0 = time.time()
    for step in range(1, steps + 1):
        b = task.train_batch(step, c["batch_size"])
        loss = F.cross_entropy(model(as_mode(b["x"], mode).to(ctx.device)), b["y"].to(ctx.device))
        optimizer_step(model, opt, loss, c["clip"])
        loss_sum += loss.item()
        loss_n += 1
        if step % c["eval_every"] == 0 or step == steps:
            acc, tl = evaluate(model, test, mode, ctx.device)
            hist["step"].append(step)
            hist["train_loss"].append(loss_sum / loss_n)
            hist["test_acc"].append(acc)
            hist["test_loss"].append(tl)
            loss_sum, loss_n = 0.0, 0
    elapsed = time.time() - t0
    thr = c["thresholds"][mode]
    reach = next((s for s, a in zip(hist["step"], hist["test_acc"]) if a >= thr), None)
    ctx.log(f"{mode:6s} {arm:18s} seed {seed}: test acc {hist['test_acc'][-1]:.3f}, reaches {thr:.0%} at "
            f"{reach}, {elapsed:.0f} s ({1000 * elapsed / steps:.1f} ms/step)")
    return {"mode": mode, "arm": arm, "seed": seed, "history": hist, "final_acc": hist["test_acc"][-1],
            "best_acc": max(hist["test_acc"]), "reach_step": reach, "seconds": elapsed,
            "auc": float(np.mean(hist["test_acc"]))}


def run(ctx: Context) -> dict:
    c = ctx.cfg
    task = SeqDigitsTask(seed=ctx.seeds[0])
    ctx.data = {"digits": f"scikit-learn load_digits, 8x8 images: {len(task.train_idx)} training / "
                          f"{len(task.test_idx)} test (split_seed 0)",
                "modes": ", ".join(f"{m}: {MODES[m][0]} steps of {MODES[m][1]}" for m in c["modes"])}
    runs = [train_arm(ctx, mode, arm, seed) for mode in c["modes"] for seed in ctx.seeds for arm in c["arms"]]
    ctx.write_json("curves.json", runs)
    rows, summary = [], {}
    for mode in c["modes"]:
        thr = c["thresholds"][mode]
        for arm in c["arms"]:
            rs = [r for r in runs if r["mode"] == mode and r["arm"] == arm]
            reach = [r["reach_step"] for r in rs]
            rows.append({"input": f"{mode} (T={MODES[mode][0]})", "model": arm,
                         "final test acc": pm([r["final_acc"] for r in rs]),
                         "best test acc": pm([r["best_acc"] for r in rs]),
                         "mean test acc over training": pm([r["auc"] for r in rs]),
                         f"step reaching acc >= threshold": f"{thr:.0%}: " + ", ".join(
                             str(s) if s is not None else "never" for s in reach),
                         "final train loss": pm([r["history"]["train_loss"][-1] for r in rs]),
                         "ms/step": pm([1000 * r["seconds"] / c["steps"][mode] for r in rs], 3)})
            summary[f"{mode}/{arm}"] = {
                "final_acc": mean_std([r["final_acc"] for r in rs]),
                "auc": mean_std([r["auc"] for r in rs]),
                "reach_step": reach}
    ctx.write_table("batchnorm", rows, title=f"Test accuracy (eval mode; {len(ctx.seeds)} seeds "
                    f"{ctx.seeds}, mean ± std; 'mean over training' is the area under the accuracy curve)")

    fig, axes = pyplot().subplots(len(c["modes"]), 2, figsize=(12, 4.0 * len(c["modes"])), squeeze=False)
    for i, mode in enumerate(c["modes"]):
        for arm in c["arms"]:
            rs = [r for r in runs if r["mode"] == mode and r["arm"] == arm]
            x = rs[0]["history"]["step"]
            shade(axes[i, 0], x, [r["history"]["train_loss"] for r in rs], arm, COLORS[arm], log=True)
            shade(axes[i, 1], x, [r["history"]["test_acc"] for r in rs], arm, COLORS[arm])
        T, I = MODES[mode]
        axes[i, 0].set_yscale("log")
        axes[i, 0].set_ylabel("training loss (cross-entropy, mean per interval)")
        axes[i, 1].set_ylabel("test accuracy")
        axes[i, 1].set_ylim(0, 1)
        for ax, what in zip(axes[i], ("training loss", "test accuracy")):
            ax.set_title(f"{mode}: {T} steps of {I} pixel{'s' if I > 1 else ''} - {what}")
            ax.set_xlabel(f"training step (batch {c['batch_size']})")
    ctx.finish_figure(fig, f"BN-LSTM (gamma 0.1 and 1.0) vs LSTM, hidden {c['hidden_size']}, sequential 8x8 "
                      f"digits; band: min-max over {len(ctx.seeds)} seeds", "batchnorm_curves.png", axes.flat)
    return summary


__all__ = ["run", "build", "ARMS", "MODES"]
