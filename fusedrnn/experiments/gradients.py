"""Experiment 3: vanishing gradients.  The norm of d loss / d h_t over t for a tanh RNN
(torch.nn.RNN) and for the LSTM (fusedrnn) on a task with a long dependency.

Task ("remember the first symbol"): a sequence of T one-hot symbols drawn uniformly from K;
the label is the first symbol, read out by a linear layer from the last hidden state h_T.
Every other symbol is a distractor (``distractors=False``: zeros after the first step), so
the only useful gradient must travel from step T back to step 1.

Models: a tanh RNN; the LSTM with nn.LSTM's initialization (every weight and bias uniform
in +-1/sqrt(H), so the forget gate starts near 0.5); and the same LSTM with the forget-gate
bias set to 1, the usual practice (Gers et al. 2000; Jozefowicz et al. 2015).

Both models have the same hidden size and the same optimizer settings, and see the same
batches.  They are trained on whole sequences (torch.nn.RNN, fusedrnn.LSTM); the gradient
profile is measured by stepping the same weights one step at a time (torch.nn.RNN on one
step; fusedrnn.LSTMCell loaded with the LSTM's weights), keeping every h_t
(``retain_grad``), on a fixed batch, at initialization and at checkpoints during training.
For each t the figure shows the median over the batch of ||d loss_b / d h_t^b||_2 (loss_b:
the cross-entropy of example b; computed in float64), and the band the min-max over seeds
of that median.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..modules import LSTM, LSTMCell
from ..report import pyplot
from .run import Context
from .summary import mean_std, pm, shade
from .training import optimizer_step

NAME = "gradients"
TITLE = "Vanishing gradients: tanh RNN vs LSTM"
CLAIM = "the LSTM keeps gradients alive over long time spans where a plain (tanh) RNN loses them"

COLORS = {"tanh-rnn": "tab:red", "lstm": "tab:blue", "lstm, forget bias 1": "tab:green"}
MODELS = {
    "tanh-rnn": "torch.nn.RNN(nonlinearity='tanh'), torch's initialization",
    "lstm": "fusedrnn.LSTM with nn.LSTM's initialization (forget gate about 0.5 at the start)",
    "lstm, forget bias 1": "the same LSTM with the forget-gate bias set to 1 (Gers et al. 2000; Jozefowicz et al. 2015)",
}

PRESETS = {
    "default": dict(seeds=[0, 1, 2], models=list(MODELS), seq_len=100, num_symbols=8, hidden_size=64,
                    batch_size=64, steps=1000, lr=3e-3, clip=1.0, eval_every=50, checkpoints=[0, 200, 1000],
                    probe_size=256, distractors=True),
    "smoke": dict(seeds=[0], seq_len=12, hidden_size=8, batch_size=8, steps=4, eval_every=2, checkpoints=[0, 4],
                  probe_size=16),
    "full": dict(seeds=[0, 1, 2, 3, 4], seq_len=200, hidden_size=128, steps=10_000, eval_every=250,
                 checkpoints=[0, 1000, 5000, 10_000]),
}


def make_batch(seed: int, stream: int, step: int, B: int, T: int, K: int, distractors: bool = True):
    """x [B, T, K] one-hot, y [B] = the first symbol (a pure function of seed, stream, step).
    Without distractors, every step after the first is all zeros."""
    rng = np.random.default_rng([seed, stream, step])
    sym = torch.from_numpy(rng.integers(0, K, size=(B, T)))
    x = F.one_hot(sym, K).float()
    if not distractors:
        x[:, 1:] = 0
    return x, sym[:, 0].clone()


class Model(nn.Module):
    """A one-layer recurrent network read out from its last hidden state."""

    def __init__(self, kind: str, K: int, H: int):
        super().__init__()
        self.kind = kind
        if kind == "tanh-rnn":
            self.rnn = nn.RNN(K, H, nonlinearity="tanh", batch_first=True)
        elif kind in ("lstm", "lstm, forget bias 1"):
            self.rnn = LSTM(K, H, batch_first=True)
            if kind == "lstm, forget bias 1":
                with torch.no_grad():                      # gate order i, f, g, o
                    self.rnn.bias_ih_l0[H:2 * H] = 1.0
                    self.rnn.bias_hh_l0[H:2 * H] = 0.0
        else:
            raise ValueError(f"unknown model {kind!r}")
        self.readout = nn.Linear(H, K)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.readout(y[:, -1])

    def stepped(self, x):
        """The same network stepped one time step at a time -> (logits, [h_1 … h_T])."""
        B, T, _ = x.shape
        hs = []
        if self.kind == "tanh-rnn":
            h = x.new_zeros(1, B, self.rnn.hidden_size)
            for t in range(T):
                _, h = self.rnn(x[:, t:t + 1], h)
                h.retain_grad()
                hs.append(h)
            last = h[0]
        else:
            cell = LSTMCell(self.rnn.input_size, self.rnn.hidden_size).to(device=x.device, dtype=x.dtype)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(self.rnn, name + "_l0"))
            # the cell's parameters are copies: gradients w.r.t. h_t are what is measured
            state = None
            for t in range(T):
                state = cell(x[:, t], state)
                state[0].retain_grad()
                hs.append(state[0])
            last = state[0]
        return self.readout(last), hs


def gradient_profile(model: Model, x, y) -> tuple[np.ndarray, float]:
    """Median over the batch of ||d loss_b / d h_t^b|| for t = 1..T, and the check that the
    stepped network gives the trained network's logits (max abs difference).

    Measured on a float64 copy of the model, so gradients far below float32's range (1e-38)
    are still resolved rather than flushed to zero."""
    with torch.no_grad():
        reference = model.eval()(x)
    model.train()
    probe = copy.deepcopy(model).double().eval()
    x = x.double()
    logits, hs = probe.stepped(x)
    diff = (logits.detach().float() - reference).abs().max().item()
    F.cross_entropy(logits, y, reduction="sum").backward()
    norms = torch.stack([h.grad.reshape(x.shape[0], -1).norm(dim=1) for h in hs])   # [T, B]
    return norms.median(dim=1).values.cpu().numpy(), diff


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(-1) == y).float().mean().item()
    model.train()
    return acc


def train_model(ctx: Context, kind: str, seed: int) -> dict:
    c = ctx.cfg
    T, K, B = c["seq_len"], c["num_symbols"], c["batch_size"]
    probe_x, probe_y = make_batch(seed, 1, 0, c["probe_size"], T, K, c["distractors"])
    probe_x, probe_y = probe_x.to(ctx.device), probe_y.to(ctx.device)
    torch.manual_seed(seed)
    model = Model(kind, K, c["hidden_size"]).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"])
    profiles, checks = {}, []
    hist = {"step": [], "train_loss": [], "probe_acc": []}
    loss_sum, n = 0.0, 0
    t0 = time.time()
    for step in range(0, c["steps"] + 1):
        if step in c["checkpoints"]:
            prof, diff = gradient_profile(model, probe_x, probe_y)
            profiles[step] = prof.tolist()
            checks.append(diff)
        if step == c["steps"]:
            break
        x, y = make_batch(seed, 0, step, B, T, K, c["distractors"])
        loss = F.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device))
        optimizer_step(model, opt, loss, c["clip"])
        loss_sum += loss.item()
        n += 1
        if (step + 1) % c["eval_every"] == 0 or step + 1 == c["steps"]:
            hist["step"].append(step + 1)
            hist["train_loss"].append(loss_sum / n)
            hist["probe_acc"].append(accuracy(model, probe_x, probe_y))
            loss_sum, n = 0.0, 0
    elapsed = time.time() - t0
    first = {s: p[0] for s, p in profiles.items()}
    last = {s: p[-1] for s, p in profiles.items()}
    ctx.log(f"{kind:8s} seed {seed}: accuracy {hist['probe_acc'][-1]:.3f}; |dL/dh_1| / |dL/dh_T| by step "
            + ", ".join(f"{s}: {first[s] / last[s]:.2e}" for s in profiles) + f"; {elapsed:.0f} s")
    return {"model": kind, "seed": seed, "profiles": profiles, "history": hist, "final_acc": hist["probe_acc"][-1],
            "ratio_first_last": {s: first[s] / last[s] for s in profiles}, "stepped_vs_sequence_max_diff": max(checks),
            "seconds": elapsed}


def run(ctx: Context) -> dict:
    c = ctx.cfg
    T, K = c["seq_len"], c["num_symbols"]
    ctx.data = {"task": f"remember the first of {T} one-hot symbols (K = {K}; chance accuracy {1 / K:.3f}); "
                        f"generated, batch of step s a function of (seed, s); probe batch {c['probe_size']} "
                        "sequences from a separate stream"}
    runs = [train_model(ctx, kind, seed) for seed in ctx.seeds for kind in c["models"]]
    ctx.write_json("profiles.json", runs)
    checkpoints = [s for s in c["checkpoints"] if s <= c["steps"]]
    rows, summary = [], {}
    for kind in c["models"]:
        rs = [r for r in runs if r["model"] == kind]
        row = {"model": kind, "params": sum(p.numel() for p in Model(kind, K, c["hidden_size"]).parameters())}
        for s in checkpoints:
            row[f"|dL/dh_1| / |dL/dh_T|, step {s}"] = pm([r["ratio_first_last"][s] for r in rs], 3)
        row["decay per step at init"] = pm([max(r["ratio_first_last"][0], 1e-300) ** (1 / (T - 1)) for r in rs], 3)
        row["final accuracy"] = pm([r["final_acc"] for r in rs], 3)
        row["s per run"] = pm([r["seconds"] for r in rs], 3)
        rows.append(row)
        ctx.notes.append(f"- {kind}: {MODELS[kind]}")
        summary[kind] = {"ratio_first_last": {s: mean_std([r["ratio_first_last"][s] for r in rs]) for s in checkpoints},
                         "final_acc": mean_std([r["final_acc"] for r in rs]),
                         "stepped_vs_sequence_max_diff": max(r["stepped_vs_sequence_max_diff"] for r in runs)}
    ctx.write_table("gradients", rows, title=f"Gradient reaching the first step relative to the last "
                    f"(T = {T}; median over {c['probe_size']} probe sequences; {len(ctx.seeds)} seeds, mean ± std)")

    n = len(checkpoints) + 1
    fig, axes = pyplot().subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
    axes = axes[0]
    t = np.arange(1, T + 1)
    for i, s in enumerate(checkpoints):
        ax = axes[i]
        for kind in c["models"]:
            rs = [r for r in runs if r["model"] == kind]
            shade(ax, t, [np.maximum(r["profiles"][s], 1e-300) for r in rs], kind, COLORS[kind], log=True)
        ax.set_yscale("log")
        ax.set_xlabel("time step t (the loss is at t = T)")
        ax.set_ylabel("median ||d loss / d h_t||")
        ax.set_title("at initialization" if s == 0 else f"after {s} training steps")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    ax = axes[-1]
    for kind in c["models"]:
        rs = [r for r in runs if r["model"] == kind]
        shade(ax, rs[0]["history"]["step"], [r["history"]["probe_acc"] for r in rs], kind, COLORS[kind])
    ax.axhline(1 / K, color="black", lw=0.8, ls=":", label=f"chance ({1 / K:.3f})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"training step (batch {c['batch_size']})")
    ax.set_ylabel("accuracy on the probe batch")
    ax.set_title("learning the dependency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"Gradient of the loss w.r.t. h_t over {T} steps: tanh RNN vs LSTM (hidden {c['hidden_size']}"
                 + (f"; band: min-max over {len(ctx.seeds)} seeds)" if len(ctx.seeds) > 1 else f"; seed {ctx.seeds[0]})"))
    fig.tight_layout()
    ctx.save_figure(fig, "gradient_norms.png")
    return summary
