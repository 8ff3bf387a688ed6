"""Experiment 1: dropout schemes on a character-level LSTM language model.

Arms (one dropout probability p for every arm that drops anything):

- ``none``:         no dropout;
- ``naive``:        recurrent dropout on h_{t-1} with a fresh mask at every step
                    (``fusedrnn.LSTM(recurrent_dropout=p, variational=False)``), nothing else;
- ``nonrec``:       dropout on the non-recurrent connections only: ``fusedrnn.LSTM(dropout=p)``
                    between layers (nn.LSTM's dropout) plus ``nn.Dropout(p)`` on the embeddings
                    and on the LSTM outputs, a fresh mask per element;
- ``variational``:  one mask per sequence everywhere (Gal & Ghahramani): recurrent dropout
                    (``recurrent_dropout=p, variational=True``, which also makes the
                    between-layer dropout shared) and [B, features] masks from
                    :func:`fusedrnn.ops.dropout_mask` broadcast over time on embeddings and outputs;
- ``naive+nonrec`` (extra arm, not in the issue's four): ``nonrec`` plus per-step recurrent
  dropout, i.e. per-step masks everywhere: the same connections as ``variational``, so the
  two differ only in whether a mask is shared across time;
- ``zoneout``:      zoneout (Krueger et al.) inside the recurrence only, at the paper's
                    character-level rates (cell 0.5, hidden 0.05) rather than p;
- ``weightdrop``:   DropConnect on W_hh only (``weight_dropout=p``, awd-lstm-lm's WeightDrop):
                    one mask over the recurrent weights per batch.

Data: Tiny Shakespeare at character level; the model trains on a small prefix of the text
(default 50,000 characters) so that it overfits and regularization matters, and is scored
on a disjoint block at the end of the text (bits per character, eval mode).  Every arm sees
the same batches in the same order and starts from the same initial weights.

Also: the probability that a unit survives k consecutive steps, measured on the masks that
:func:`fusedrnn.ops.dropout.recurrent_mask` draws (per step vs shared, p = 0.1), with
:func:`fusedrnn.ops.dropout.survival_probability`.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models._common import rnn_class
from ..modules.explain import explain
from ..ops.dropout import dropout_mask, recurrent_mask, survival_probability
from ..report import pyplot
from ..tasks.base import Vocab
from ..tasks.text import DEFAULT_TEXT
from .run import ConfigError, Context
from .summary import mean_std, pm, shade
from .training import optimizer_step

NAME = "dropout"
TITLE = "Dropout schemes on a character-level language model (LSTM, or GRU with cell=gru)"
CLAIM = ("dropout applied naively inside the recurrence hurts; dropout on non-recurrent connections only "
         "helps; a mask shared across time (variational) helps most")

SCHEMES = {
    "none": "no dropout",
    "naive": "per-step recurrent masks on h_{t-1} only",
    "nonrec": "non-recurrent only: embeddings, between layers, outputs (fresh masks)",
    "variational": "shared masks everywhere: embeddings, recurrent, between layers, outputs",
    "naive+nonrec": "per-step masks everywhere (extra arm)",
    "zoneout": "zoneout in the recurrence only (cell 0.5, hidden 0.05)",
    "weightdrop": "DropConnect on W_hh only (one weight mask per batch)",
}
COLORS = {"none": "tab:gray", "naive": "tab:red", "nonrec": "tab:blue", "variational": "tab:green",
          "naive+nonrec": "tab:orange", "zoneout": "tab:purple", "weightdrop": "tab:brown"}
ZONEOUT_RATES = (0.5, 0.05)  # Krueger et al., character-level Penn Treebank

PRESETS = {
    "default": dict(seeds=[0], schemes=list(SCHEMES), cell="lstm", p=0.25, embed_size=64, hidden_size=128, num_layers=2,
                    seq_len=32, batch_size=16, steps=4000, eval_every=200, lr=3e-3, clip=5.0,
                    train_chars=50_000, valid_range=[50_000, 99_843], train_eval_chars=20_000, text=None,
                    survival_p=0.1, survival_steps=100, survival_units=2 ** 22),
    "smoke": dict(schemes=list(SCHEMES), embed_size=8, hidden_size=16, seq_len=16, batch_size=8, steps=4,
                  eval_every=2, train_chars=2_000, valid_range=[2_000, 3_000], survival_units=2 ** 14),
    "full": dict(seeds=[0, 1, 2], embed_size=128, hidden_size=512, seq_len=100, batch_size=64, steps=20_000,
                 eval_every=500, train_chars=None, valid_range=None),
}

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CharLM(nn.Module):
    """embedding -> dropout -> fusedrnn.LSTM (or GRU: ``cell``) -> dropout -> linear, with one
    of SCHEMES (a GRU's zoneout is the hidden rate alone)."""

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int, scheme: str, p: float,
                 cell: str = "lstm"):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
        self.scheme, self.p = scheme, float(p)
        between = p if num_layers > 1 else 0.0
        kw = {"none": {}, "naive": dict(recurrent_dropout=p), "nonrec": dict(dropout=between),
              "variational": dict(dropout=between, recurrent_dropout=p, variational=True),
              "naive+nonrec": dict(dropout=between, recurrent_dropout=p),
              "zoneout": dict(zoneout=ZONEOUT_RATES if cell == "lstm" else ZONEOUT_RATES[1]),
              "weightdrop": dict(weight_dropout=p)}[scheme]
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = rnn_class("CharLM", cell)(embed_size, hidden_size, num_layers, batch_first=True, **kw)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def _drop(self, x):
        """Dropout on embeddings / outputs [B, T, F]: shared over time, per element, or none."""
        if not self.training or self.p == 0 or self.scheme in ("none", "naive", "zoneout", "weightdrop"):
            return x
        if self.scheme == "variational":
            return x * dropout_mask(self.p, (x.shape[0], x.shape[2]), x).unsqueeze(1)
        return F.dropout(x, self.p, True)

    def forward(self, tokens):
        y, _ = self.rnn(self._drop(self.embedding(tokens)))
        return self.decoder(self._drop(y))


def backend_summary(report: str) -> str:
    """The chosen backend of each layer from a fusedrnn.explain report."""
    import re

    found = re.findall(r"^\s+(layer\S*|all layers): (\S+)", report, re.M)
    return ", ".join(f"{w} {b}" for w, b in found) or report


def load_text(path=None) -> tuple[str, str]:
    """(text, description): ``path``, else the vendored Tiny Shakespeare (the whole file)."""
    path = path or DEFAULT_TEXT
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text, f"{os.path.relpath(os.path.abspath(path), ROOT)} ({len(text):,} characters)"


def windows(ids: torch.Tensor, starts, T: int):
    idx = torch.as_tensor(np.asarray(starts), dtype=torch.long).unsqueeze(1) + torch.arange(T + 1)
    w = ids[idx]
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def bits_per_char(model: nn.Module, ids: torch.Tensor, T: int, device, batch: int = 128) -> float:
    """Eval-mode cross-entropy in bits per character over consecutive windows of ids."""
    model.eval()
    starts = np.arange(0, len(ids) - T - 1, T)
    tot, n = 0.0, 0
    for i in range(0, len(starts), batch):
        x, y = windows(ids, starts[i:i + batch], T)
        logits = model(x.to(device))
        tot += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        n += y.numel()
    model.train()
    return tot / n / math.log(2)


def train_arm(ctx: Context, scheme: str, seed: int, vocab_size: int, train_ids, valid_ids) -> dict:
    c = ctx.cfg
    torch.manual_seed(seed)
    model = CharLM(vocab_size, c["embed_size"], c["hidden_size"], c["num_layers"], scheme, c["p"],
                   c["cell"]).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"])
    T, B = c["seq_len"], c["batch_size"]
    hist = {"step": [], "valid_bpc": [], "train_bpc": [], "train_loss": []}
    loss_sum, loss_n = 0.0, 0
    model.train()
    t0 = time.time()
    backend = explain(model.rnn, torch.zeros(B, T, c["embed_size"], device=ctx.device))
    for step in range(1, c["steps"] + 1):
        rng = np.random.default_rng([seed, step])
        x, y = windows(train_ids, rng.integers(0, len(train_ids) - T - 1, size=B), T)
        logits = model(x.to(ctx.device))
        loss = F.cross_entropy(logits.flatten(0, 1), y.to(ctx.device).flatten())
        optimizer_step(model, opt, loss, c["clip"])
        loss_sum += loss.item()
        loss_n += 1
        if step % c["eval_every"] == 0 or step == c["steps"]:
            hist["step"].append(step)
            hist["train_loss"].append(loss_sum / loss_n / math.log(2))
            loss_sum, loss_n = 0.0, 0
            with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
                hist["valid_bpc"].append(bits_per_char(model, valid_ids, T, ctx.device))
                hist["train_bpc"].append(bits_per_char(model, train_ids[:c["train_eval_chars"]], T, ctx.device))
    elapsed = time.time() - t0
    v = hist["valid_bpc"]
    best = int(np.argmin(v))
    ctx.log(f"{scheme:13s} seed {seed}: valid bpc {v[-1]:.3f} (best {v[best]:.3f} at step {hist['step'][best]}), "
            f"train bpc {hist['train_bpc'][-1]:.3f}, {elapsed:.0f} s")
    return {"scheme": scheme, "seed": seed, "history": hist, "final_valid_bpc": v[-1], "best_valid_bpc": v[best],
            "best_step": hist["step"][best], "final_train_bpc": hist["train_bpc"][-1], "seconds": elapsed,
            "backend": backend.strip()}


def mask_survival(ctx: Context) -> dict:
    """Survival of units under per-step vs shared recurrent masks, measured on drawn masks."""
    c = ctx.cfg
    p, S, R = c["survival_p"], c["survival_steps"], 256
    rows = max(1, c["survival_units"] // R)
    chunk = max(1, min(rows, 2 ** 22 // (S * R)))
    like = torch.empty(0)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(ctx.seeds[0])
    alive = torch.zeros(S, dtype=torch.float64)           # units kept for the first k steps, k = 1..S
    kept_shared = 0.0
    n = 0
    checks = {10: 0.0, S: 0.0}
    done = 0
    while done < rows:
        b = min(chunk, rows - done)
        m = recurrent_mask(p, S, b, R, like, shared=False)            # [S, b, R], fresh mask per step
        alive += (m != 0).to(torch.float64).cumprod(0).sum((1, 2))
        for k in checks:
            checks[k] += survival_probability(m, k) * b * R
        shared = recurrent_mask(p, S, b, R, like, shared=True)       # [b, R], reused at every step
        kept_shared += survival_probability(shared, S) * b * R
        n += b * R
        done += b
    torch.random.set_rng_state(gen_state)
    curve = (alive / n).tolist()
    out = {"p": p, "units": n, "per_step_curve": curve, "shared": kept_shared / n,
           "per_step": {k: v / n for k, v in checks.items()}, "analytic": {k: (1 - p) ** k for k in checks}}
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    k = np.arange(1, S + 1)
    measured = np.asarray(curve)
    pos = measured > 0
    ax.semilogy(k[pos], measured[pos], "o", ms=3, color="tab:red", label=f"per-step masks, measured ({n:,} units)")
    ax.semilogy(k, (1 - p) ** k, "-", color="black", lw=1, label=f"per-step, $(1-p)^k$, p = {p}")
    ax.semilogy(k, np.full(S, out["shared"]), "-", color="tab:green", lw=2,
                label=f"shared (variational) mask, measured: {out['shared']:.3f}")
    for kk in checks:
        ax.annotate(f"k={kk}: {out['per_step'][kk]:.3g}", (kk, max(out["per_step"][kk], 1e-7)),
                    textcoords="offset points", xytext=(-70, -16 if kk == S else 8), fontsize=8,
                    arrowprops=dict(arrowstyle="-", lw=0.6))
    ax.set_xlabel("k (consecutive time steps)")
    ax.set_ylabel("P(unit kept at every one of the k steps)")
    ax.set_title(f"Recurrent dropout p = {p}: per-step vs shared masks")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    ctx.save_figure(fig, "mask_survival.png")
    ctx.write_table("mask_survival", [
        {"steps k": kk, "per-step mask, measured": out["per_step"][kk], "(1-p)^k": out["analytic"][kk],
         "shared mask, measured": out["shared"]} for kk in checks],
        title=f"Probability that a unit survives k steps of recurrent dropout, p = {p} ({n:,} units)")
    ctx.log(f"survival p={p}: per-step {out['per_step']}, shared {out['shared']:.4f}")
    return out


def run(ctx: Context) -> dict:
    c = ctx.cfg
    text, source = load_text(c["text"])
    n_train = c["train_chars"] or int(len(text) * 0.9)
    v0, v1 = c["valid_range"] or (n_train, len(text))
    if not (n_train <= v0 < v1 <= len(text)) or v1 - v0 < 2 * c["seq_len"] + 2:
        raise ConfigError(f"the text has {len(text):,} characters: cannot train on [0, {n_train:,}) and validate "
                         f"on [{v0:,}, {v1:,})")
    train_text, valid_text = text[:n_train], text[v0:v1]
    vocab = Vocab(sorted(set(train_text + valid_text)), specials=False)
    train_ids = torch.tensor(vocab.encode(train_text), dtype=torch.long)
    valid_ids = torch.tensor(vocab.encode(valid_text), dtype=torch.long)
    steps_per_epoch = n_train / (c["batch_size"] * c["seq_len"])
    ctx.data = {"text": source, "training split": f"characters [0, {n_train:,})",
                "validation split": f"characters [{v0:,}, {v1:,})",
                "vocabulary": f"{len(vocab)} characters (those of the two splits)",
                "epochs": round(c["steps"] / steps_per_epoch, 1)}
    survival = mask_survival(ctx)
    runs = [train_arm(ctx, s, seed, len(vocab), train_ids, valid_ids) for seed in ctx.seeds for s in c["schemes"]]
    ctx.write_json("curves.json", runs)

    # -- table --
    rows = []
    for s in c["schemes"]:
        rs = [r for r in runs if r["scheme"] == s]
        rows.append({"scheme": s, "dropped": SCHEMES[s],
                     "final valid bpc": pm([r["final_valid_bpc"] for r in rs]),
                     "best valid bpc": pm([r["best_valid_bpc"] for r in rs]),
                     "best at step": "/".join(str(r["best_step"]) for r in rs),
                     "final train bpc": pm([r["final_train_bpc"] for r in rs]),
                     "valid - train": pm([r["final_valid_bpc"] - r["final_train_bpc"] for r in rs], 3),
                     "seconds": pm([r["seconds"] for r in rs], 3)})
    ctx.write_table("dropout", rows, title=f"Validation bits per character after {c['steps']} steps "
                    f"(p = {c['p']}, {len(ctx.seeds)} seed{'s' if len(ctx.seeds) > 1 else ''}; "
                    "bpc in eval mode, lower is better)")

    # -- figure --
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4.4))
    for s in c["schemes"]:
        rs = [r for r in runs if r["scheme"] == s]
        x = rs[0]["history"]["step"]
        shade(axes[0], x, [r["history"]["valid_bpc"] for r in rs], f"{s}", COLORS[s])
        shade(axes[1], x, [r["history"]["train_bpc"] for r in rs], f"{s}", COLORS[s])
    for ax, what in zip(axes, ("validation (held-out text)",
                             f"training text (first {min(n_train, c['train_eval_chars']):,} characters)")):
        ax.set_xlabel(f"training step (batch {c['batch_size']} x {c['seq_len']} chars; "
                      f"1 epoch = {steps_per_epoch:.0f} steps)")
        ax.set_ylabel("bits per character (eval mode)")
        ax.set_title(f"{what}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lo = min(min(r["history"]["valid_bpc"]) for r in runs)
    hi = max(r["history"]["valid_bpc"][min(2, len(r["history"]["valid_bpc"]) - 1)] for r in runs)
    if hi > lo:
        axes[0].set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    fig.suptitle(f"Dropout schemes, char-level {c['cell'].upper()} LM ({c['num_layers']}x{c['hidden_size']}, p = {c['p']}) on "
                 f"{n_train:,} characters of Tiny Shakespeare")
    ctx.save_figure(fig, "dropout_curves.png")

    means = {s: mean_std([r["final_valid_bpc"] for r in runs if r["scheme"] == s])[0] for s in c["schemes"]}
    bests = {s: mean_std([r["best_valid_bpc"] for r in runs if r["scheme"] == s])[0] for s in c["schemes"]}
    ctx.notes.append("Backends (fusedrnn.explain): " + "; ".join(
        f"{r['scheme']}: {backend_summary(r['backend'])}" for r in runs if r["seed"] == ctx.seeds[0]))
    return {"final_valid_bpc": means, "best_valid_bpc": bests,
            "ranking_final": sorted(means, key=means.get), "ranking_best": sorted(bests, key=bests.get),
            "survival": {"p": survival["p"], "per_step": survival["per_step"], "analytic": survival["analytic"],
                         "shared": survival["shared"], "units": survival["units"]}}
