"""Experiment 5: the Neural Turing Machine (Graves et al., arXiv 1410.5401) on the copy task.

Task: :class:`fusedrnn.tasks.CopyTask`: read L random W-bit vectors and a delimiter, then
write the L vectors back; training lengths are uniform in [1, max_len].

Models: :class:`fusedrnn.models.NTM` (a fusedrnn.LSTMCell controller, one read and one
write head) and, for reference, an LSTM (:class:`fusedrnn.models.SequenceTagger`,
unidirectional) trained on the same batches with the same optimizer settings.

Outputs: the learning curve (bit errors per sequence on held-out sequences of the training
lengths), generalization to longer sequences (per-bit error rate at each length up to
``gen_max_len``, never seen in training), and the NTM's read / write weightings over time on
one sequence of the training length and one longer sequence.
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from ..models import NTM, SequenceTagger
from ..report import pyplot
from ..tasks import CopyTask
from ..train.objectives import make_objective
from .run import ConfigError, Context
from .summary import mean_std, pm, shade
from .training import train_on_task

NAME = "ntm"
TITLE = "Neural Turing Machine on copy"
CLAIM = ("the NTM learns to copy with content- and location-based addressing, generalizes to sequences longer "
         "than those it was trained on, and its read/write weightings show the memory access")

COLORS = {"ntm": "tab:purple", "lstm": "tab:gray"}

PRESETS = {
    "default": dict(seeds=[0, 1], models=["ntm", "lstm"], width=8, max_len=10, gen_max_len=30, gen_size=64,
                    controller_size=64, memory_size=40, memory_width=16, lstm_hidden=128, batch_size=32,
                    steps=1500, lr=1e-2, clip=10.0, eval_every=100, eval_size=128),
    "smoke": dict(width=3, max_len=3, gen_max_len=5, gen_size=4, controller_size=8, memory_size=8, memory_width=4,
                  lstm_hidden=8, batch_size=4, steps=4, eval_every=2, eval_size=8),
    "full": dict(seeds=[0, 1, 2], max_len=20, gen_max_len=60, gen_size=128, controller_size=100, memory_size=128,
                 memory_width=20, lstm_hidden=256, steps=50_000, lr=1e-3, eval_every=1000, eval_size=256),
}


def build(kind: str, task: CopyTask, c: dict) -> nn.Module:
    if kind == "ntm":
        return NTM(task.input_size, task.output_size, controller_size=c["controller_size"],
                   memory_size=c["memory_size"], memory_width=c["memory_width"])
    if kind == "lstm":
        return SequenceTagger(task.output_size, input_size=task.input_size, hidden_size=c["lstm_hidden"],
                              bidirectional=False)
    raise ValueError(f"unknown model {kind!r}")


@torch.no_grad()
def score(model, objective, batches, device) -> dict:
    model.eval()
    errors = bits = seqs = 0.0
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        pred, _ = objective.predict(model, b)
        wrong = ((pred > 0.5) != (b["y"] > 0.5)) & b["mask"].unsqueeze(-1)
        errors += wrong.sum().item()
        bits += b["mask"].sum().item() * b["y"].shape[-1]
        seqs += b["y"].shape[0]
    model.train()
    return {"bit_errors": errors / seqs, "bit_error_rate": errors / max(bits, 1)}


def train_model(ctx: Context, kind: str, seed: int) -> dict:
    c = ctx.cfg
    task = CopyTask(width=c["width"], min_len=1, max_len=c["max_len"], seed=seed, eval_size=c["eval_size"])
    eval_batches = task.eval_batches(c["eval_size"])
    objective = make_objective(task)
    torch.manual_seed(seed)
    model = build(kind, task, c).to(ctx.device)
    hist, train_s = train_on_task(ctx, model, task, objective, "bit_errors",
                                  lambda: score(model, objective, eval_batches, ctx.device)["bit_errors"])
    gen = {}
    for L in range(1, c["gen_max_len"] + 1):
        t = CopyTask(width=c["width"], min_len=1, max_len=c["max_len"], eval_min_len=L, eval_max_len=L,
                     seed=seed + 1000, eval_size=c["gen_size"])
        gen[L] = score(model, objective, t.eval_batches(c["gen_size"]), ctx.device)
    ctx.log(f"{kind:5s} seed {seed}: bit errors/seq {hist['bit_errors'][-1]:.3f} at lengths 1-{c['max_len']}; "
            f"bit error rate at length {c['gen_max_len']}: {gen[c['gen_max_len']]['bit_error_rate']:.3f}; "
            f"{train_s:.0f} s")
    return {"model_name": kind, "seed": seed, "history": hist, "gen": gen, "seconds": train_s, "module": model,
            "task": task}


def weightings(ctx: Context, run: dict) -> None:
    c = ctx.cfg
    model = run["module"]
    lengths = [c["max_len"], min(2 * c["max_len"], c["gen_max_len"])]
    fig, axes = pyplot().subplots(5, len(lengths), figsize=(6.2 * len(lengths), 9.5), squeeze=False,
                               gridspec_kw={"height_ratios": [1, 1, 1, 2.2, 2.2]})
    model.eval()
    for j, L in enumerate(lengths):
        t = CopyTask(width=c["width"], min_len=1, max_len=c["max_len"], eval_min_len=L, eval_max_len=L,
                     seed=run["seed"] + 2000, eval_size=1)
        b = t.eval_batches(1)[0]
        with torch.no_grad():
            logits, trace = model(b["x"].to(ctx.device), return_trace=True)
        T = b["x"].shape[1]
        out = torch.sigmoid(logits[0]).cpu() * b["mask"][0].unsqueeze(-1)
        w_w, w_r = trace["write_weights"][0, :, 0].cpu(), trace["read_weights"][0, :, 0].cpu()
        used = (w_w.amax(0) > 0.05) | (w_r.amax(0) > 0.05)
        hi = min(int(used.nonzero().max()) + 2, c["memory_size"]) if used.any() else c["memory_size"]
        lo = max(0, int(used.nonzero().min()) - 1) if used.any() else 0
        errs = int(((out > 0.5) != (b["y"][0] > 0.5)).logical_and(b["mask"][0].unsqueeze(-1)).sum())
        panels = [("input", b["x"][0].T, "gray_r"), ("target", b["y"][0].T, "gray_r"),
                  (f"output ({errs} bit errors)", out.T, "gray_r"),
                  ("write weighting", w_w[:, lo:hi].T, "magma"), ("read weighting", w_r[:, lo:hi].T, "magma")]
        for i, (name, img, cmap) in enumerate(panels):
            ax = axes[i, j]
            head = "weighting" in name
            ax.imshow(img.float().numpy(), cmap=cmap, aspect="auto", interpolation="nearest", vmin=0, vmax=1,
                      extent=(-0.5, T - 0.5, (hi - 0.5) if head else img.shape[0] - 0.5, (lo - 0.5) if head else -0.5))
            ax.set_ylabel(f"{name}\n(memory slot)" if head else name, fontsize=8)
            if not head:
                ax.set_yticks([])
        axes[0, j].set_title(f"sequence length {L}" + (" (training length)" if L <= c["max_len"]
                                                        else f" (longer than any in training, max {c['max_len']})"))
        axes[-1, j].set_xlabel("time step (read phase, delimiter, write phase)")
    fig.suptitle(f"NTM on copy: write and read weightings over time (seed {run['seed']}, after {c['steps']} steps)")
    fig.tight_layout()
    ctx.save_figure(fig, "ntm_weightings.png")
    model.train()


def run(ctx: Context) -> dict:
    c = ctx.cfg
    if c["gen_max_len"] > c["memory_size"]:
        raise ConfigError(f"gen_max_len ({c['gen_max_len']}) must be <= memory_size ({c['memory_size']})")
    ctx.data = {"copy": f"generated: {c['width']}-bit vectors, training lengths 1-{c['max_len']}, "
                        f"generalization lengths 1-{c['gen_max_len']} ({c['gen_size']} sequences each)"}
    runs = [train_model(ctx, kind, seed) for seed in ctx.seeds for kind in c["models"]]
    if "ntm" in c["models"]:
        weightings(ctx, next(r for r in runs if r["model_name"] == "ntm"))
    ctx.write_json("curves.json", [{k: v for k, v in r.items() if k not in ("module", "task")} for r in runs])
    Ls = list(range(1, c["gen_max_len"] + 1))
    rows, summary = [], {}
    for kind in c["models"]:
        rs = [r for r in runs if r["model_name"] == kind]
        params = sum(p.numel() for p in rs[0]["module"].parameters())
        row = {"model": kind, "params": params,
               f"bit errors / seq, lengths 1-{c['max_len']}": pm([r["history"]["bit_errors"][-1] for r in rs], 3)}
        for L in sorted({c["max_len"], min(2 * c["max_len"], c["gen_max_len"]), c["gen_max_len"]}):
            row[f"bit error rate, length {L}"] = pm([r["gen"][L]["bit_error_rate"] for r in rs], 3)
        row["train s"] = pm([r["seconds"] for r in rs], 3)
        rows.append(row)
        summary[kind] = {"bit_errors": mean_std([r["history"]["bit_errors"][-1] for r in rs]),
                         "gen_bit_error_rate": {L: mean_std([r["gen"][L]["bit_error_rate"] for r in rs])[0]
                                                for L in Ls}}
    ctx.write_table("ntm_copy", rows, title=f"Copy after {c['steps']} steps (trained on lengths 1-{c['max_len']}; "
                    f"{len(ctx.seeds)} seed{'s' if len(ctx.seeds) > 1 else ''})")

    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4.4))
    for kind in c["models"]:
        rs = [r for r in runs if r["model_name"] == kind]
        shade(axes[0], rs[0]["history"]["step"], [np.maximum(r["history"]["bit_errors"], 1e-3) for r in rs],
              kind, COLORS[kind], log=True)
        shade(axes[1], Ls, [[r["gen"][L]["bit_error_rate"] for L in Ls] for r in rs], kind, COLORS[kind], style="o-")
    axes[0].set_yscale("log")
    axes[0].set_xlabel(f"training step (batch {c['batch_size']})")
    axes[0].set_ylabel(f"bit errors per sequence (held out, lengths 1-{c['max_len']})")
    axes[0].set_title("learning curve")
    axes[1].axvspan(0.5, c["max_len"] + 0.5, color="tab:green", alpha=0.08, label="training lengths")
    axes[1].axhline(0.5, color="black", lw=0.8, ls=":", label="chance (0.5)")
    axes[1].set_xlabel("sequence length L")
    axes[1].set_ylabel(f"bit error rate ({c['gen_size']} sequences per length)")
    axes[1].set_title("generalization to longer sequences")
    axes[1].set_ylim(-0.01, 0.6)
    ctx.finish_figure(fig, f"NTM (controller {c['controller_size']}, memory {c['memory_size']}x{c['memory_width']}) "
                      f"vs LSTM (hidden {c['lstm_hidden']}) on copy of {c['width']}-bit vectors", "ntm_copy.png", axes)
    return summary
