"""Experiment 4: attention on the seq2seq date normalizer.

Task: :class:`fusedrnn.tasks.DatesTask`, human-readable dates in 22 formats ("3rd of March
2021", "03/03/21", "Wednesday, March 3, 2021", ...) -> ISO 8601 ("2021-03-03"); every tenth
day is held out, and all evaluation uses held-out days only.

Models: :class:`fusedrnn.models.Seq2Seq` (bidirectional fusedrnn.LSTM encoder, fusedrnn.LSTMCell
decoder with input feeding) with Bahdanau (additive) attention and without attention (the
decoder sees the source only through the encoder's final states), same sizes, same batches,
same optimizer settings and number of steps.

Outputs: the alignment heatmaps (attention weights of the greedy decode) on a few held-out
inputs, the exact-match learning curves, and the exact-match accuracy as a function of the
input length (every format on the same held-out days, grouped by the length of the source
string).

Date strings are short (8-29 characters) and their length says little about how much has
to be carried over (a weekday name adds characters, not information), so the experiment
also runs a controlled length sweep: the same two models copy random digit strings of
length ``copy_min_len``-``copy_max_len`` (every digit must reach the output, so the
information grows with the length), scored at each length.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..models import Seq2Seq
from ..report import pyplot
from ..tasks import DatesTask
from ..tasks.base import BOS, EOS, PAD, Vocab, pad_sequences
from ..tasks.dates import FORMATS, human
from ..train.objectives import make_objective
from .run import Context
from .summary import mean_std, pm, seeds_text, shade
from .training import optimizer_step, train_on_task

NAME = "attention"
TITLE = "Attention on the seq2seq date normalizer"
CLAIM = "attention learns alignments between output and input positions, and helps more as inputs get longer"
DIGITS = Vocab("0123456789")

ARMS = {"bahdanau": "bahdanau", "no attention": "none"}
COLORS = {"bahdanau": "tab:blue", "no attention": "tab:red"}
HEATMAP_FORMATS = (5, 15, 6, 9)   # "Wednesday, March 3, 2021", "3rd of March 2021", "03/03/21", "2021.03.03"

PRESETS = {
    "default": dict(seeds=[0, 1], arms=list(ARMS), embed_size=32, hidden_size=64, batch_size=64, steps=1000,
                    lr=3e-3, clip=5.0, eval_every=100, curve_eval_size=256, days_per_format=40,
                    length_bins=[0, 10, 14, 18, 22, 26, 40],
                    copy_num_seeds=1, copy_steps=1200, copy_min_len=2, copy_max_len=20, copy_eval_lengths=[2, 5, 8, 11, 14, 17, 20],
                    copy_eval_size=128),
    "smoke": dict(seeds=[0], embed_size=8, hidden_size=8, batch_size=8, steps=4, eval_every=2, curve_eval_size=8,
                  days_per_format=2, copy_steps=4, copy_max_len=6, copy_eval_lengths=[2, 6], copy_eval_size=4),
    "full": dict(seeds=[0, 1, 2], embed_size=64, hidden_size=128, steps=5000, eval_every=250, days_per_format=200,
                 copy_num_seeds=3, copy_steps=5000, copy_max_len=40, copy_eval_lengths=[2, 5, 10, 15, 20, 25, 30, 35, 40],
                 copy_eval_size=256),
}


def length_eval_set(task: DatesTask, days_per_format: int, seed: int) -> dict:
    """The same held-out days in every format -> one batch dict (+ 'length': source characters)."""
    rng = np.random.default_rng([seed, 7])
    days = rng.choice(task.eval_days, size=days_per_format, replace=False)
    all_days = np.repeat(days, len(FORMATS))
    fmts = np.tile(np.arange(len(FORMATS)), days_per_format)
    batch = task.encode(all_days, fmts)
    batch["length"] = batch["src_len"] - 1   # without the EOS
    return batch


@torch.no_grad()
def exact_match(model: Seq2Seq, task: DatesTask, batch: dict, device, chunk: int = 512) -> np.ndarray:
    """Greedy decoding -> [N] bool, exact match of each row."""
    model.eval()
    out = []
    for i in range(0, batch["src"].shape[0], chunk):
        src, src_len = batch["src"][i:i + chunk].to(device), batch["src_len"][i:i + chunk].to(device)
        tokens, _ = model.greedy(src, src_len, max_len=batch["tgt_out"].shape[1] + 5)
        for j in range(tokens.shape[0]):
            out.append(task.tgt_vocab.decode(tokens[j].cpu()) == task.tgt_vocab.decode(batch["tgt_out"][i + j]))
    model.train()
    return np.asarray(out)


def train_arm(ctx: Context, arm: str, seed: int, length_set: dict) -> dict:
    c = ctx.cfg
    task = DatesTask(seed=seed, eval_size=c["curve_eval_size"])
    curve_set = task.eval_batches(c["curve_eval_size"])[0]
    torch.manual_seed(seed)
    model = Seq2Seq(len(task.src_vocab), len(task.tgt_vocab), embed_size=c["embed_size"],
                    hidden_size=c["hidden_size"], attention=ARMS[arm]).to(ctx.device)
    hist, train_s = train_on_task(ctx, model, task, make_objective(task), "exact_match",
                                  lambda: float(exact_match(model, task, curve_set, ctx.device).mean()))
    right = exact_match(model, task, length_set, ctx.device)
    ctx.log(f"{arm:12s} seed {seed}: exact match {right.mean():.3f} on {len(right)} held-out inputs "
            f"(curve {hist['exact_match'][-1]:.3f}), {train_s:.0f} s")
    return {"arm": arm, "seed": seed, "history": hist, "right": right, "final_exact": float(right.mean()),
            "seconds": train_s, "model": model, "task": task}


def heatmaps(ctx: Context, run: dict) -> None:
    model, task = run["model"], run["task"]
    rng = np.random.default_rng([run["seed"], 11])
    days = rng.choice(task.eval_days, size=len(HEATMAP_FORMATS), replace=False)
    batch = task.encode(days, list(HEATMAP_FORMATS))
    model.eval()
    with torch.no_grad():
        tokens, attn = model.greedy(batch["src"].to(ctx.device), batch["src_len"].to(ctx.device), max_len=16)
    n = len(days)
    fig, axes = pyplot().subplots(1, n, figsize=(4.4 * n, 4.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        src = list(human(days[i], HEATMAP_FORMATS[i])) + ["</s>"]
        out = task.tgt_vocab.decode(tokens[i].cpu())
        rows = len(out) + 1
        w = attn[i, :rows, :len(src)].float().cpu().numpy()
        im = ax.imshow(w, cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(len(src)))
        ax.set_xticklabels(["␣" if s == " " else s for s in src], fontsize=7)
        ax.set_yticks(range(rows))
        ax.set_yticklabels(list(out) + ["</s>"], fontsize=7)
        ax.set_xlabel("source character")
        ax.set_ylabel("output character (greedy decode)")
        ok = out == task.tgt_vocab.decode(batch["tgt_out"][i])
        ax.set_title(f"{human(days[i], HEATMAP_FORMATS[i])!r}\n-> {out} {'(correct)' if ok else '(wrong)'}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02, pad=0.01, label="attention weight")
    fig.suptitle(f"Bahdanau attention weights of the date normalizer on held-out dates (seed {run['seed']}, "
                 f"after {ctx.cfg['steps']} steps)", y=1.06)
    ctx.save_figure(fig, "attention_alignments.png")
    model.train()


def copy_batch(seed: int, stream: int, step: int, B: int, lo: int, hi: int) -> dict:
    """Random digit strings of length uniform in [lo, hi] -> themselves (a seq2seq batch)."""
    rng = np.random.default_rng([seed, 100 + stream, step])
    seqs = [list(rng.integers(4, 4 + 10, size=int(n))) for n in rng.integers(lo, hi + 1, size=B)]
    src = [q + [EOS] for q in seqs]
    tgt_out = pad_sequences([q + [EOS] for q in seqs])
    return {"src": pad_sequences(src), "src_len": torch.tensor([len(q) for q in src]),
            "tgt_in": pad_sequences([[BOS] + q for q in seqs]), "tgt_out": tgt_out, "mask": tgt_out != PAD}


def train_copy(ctx: Context, arm: str, seed: int) -> dict:
    """The length sweep: train on digit strings of every length, score each length."""
    c = ctx.cfg
    torch.manual_seed(seed)
    model = Seq2Seq(len(DIGITS), len(DIGITS), embed_size=c["embed_size"], hidden_size=c["hidden_size"],
                    attention=ARMS[arm]).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"])
    t0 = time.time()
    for step in range(1, c["copy_steps"] + 1):
        b = {k: v.to(ctx.device) for k, v in copy_batch(seed, 0, step, c["batch_size"], c["copy_min_len"],
                                                        c["copy_max_len"]).items()}
        logits, _ = model(b["src"], b["src_len"], b["tgt_in"])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), b["tgt_out"].flatten(), ignore_index=PAD)
        optimizer_step(model, opt, loss, c["clip"])
    train_s = time.time() - t0
    model.eval()
    exact, chars = {}, {}
    with torch.no_grad():
        for L in c["copy_eval_lengths"]:
            b = copy_batch(seed, 1, L, c["copy_eval_size"], L, L)
            tokens, _ = model.greedy(b["src"].to(ctx.device), b["src_len"].to(ctx.device), max_len=L + 5)
            ok = right = 0
            for i in range(tokens.shape[0]):
                p, t = DIGITS.decode(tokens[i].cpu()), DIGITS.decode(b["tgt_out"][i])
                ok += p == t
                right += sum(a == b_ for a, b_ in zip(p, t))
            exact[L], chars[L] = ok / tokens.shape[0], right / (L * tokens.shape[0])
    ctx.log(f"copy {arm:12s} seed {seed}: exact match by length " + ", ".join(f"{L}: {v:.2f}" for L, v in exact.items())
            + f"; {train_s:.0f} s")
    return {"arm": arm, "seed": seed, "exact": exact, "chars": chars, "seconds": train_s}


def run(ctx: Context) -> dict:
    c = ctx.cfg
    task0 = DatesTask(seed=ctx.seeds[0])
    length_set = length_eval_set(task0, c["days_per_format"], ctx.seeds[0])
    lengths = length_set["length"].numpy()
    ctx.data = {"dates": f"generated: {len(FORMATS)} formats, days 1950-2049, every tenth day held out "
                         f"({len(task0.train_days)} training / {len(task0.eval_days)} held-out days)",
                "length evaluation set": f"{c['days_per_format']} held-out days x {len(FORMATS)} formats = "
                                         f"{len(lengths)} inputs, {lengths.min()}-{lengths.max()} characters"}
    runs = [train_arm(ctx, arm, seed, length_set) for seed in ctx.seeds for arm in c["arms"]]
    copy_seeds = ctx.seeds[:c["copy_num_seeds"]]
    copy_runs = [train_copy(ctx, arm, seed) for seed in copy_seeds for arm in c["arms"]]
    ctx.data["digit-string copy"] = (f"generated: strings of {c['copy_min_len']}-{c['copy_max_len']} random digits -> "
                                     f"the same string; {c['copy_eval_size']} fresh strings per evaluated length")
    if "bahdanau" in c["arms"]:
        heatmaps(ctx, next(r for r in runs if r["arm"] == "bahdanau"))

    edges = c["length_bins"]
    bins = [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if ((lengths > lo) & (lengths <= hi)).any()]
    labels = [f"{lo + 1}-{hi}" for lo, hi in bins]
    counts = [int(((lengths > lo) & (lengths <= hi)).sum()) for lo, hi in bins]
    by_bin = {}
    for r in runs:
        by_bin[(r["arm"], r["seed"])] = [float(r["right"][(lengths > lo) & (lengths <= hi)].mean()) for lo, hi in bins]
    fmt_acc = {}
    fmt_ids = length_set["fmt"].numpy()
    for r in runs:
        fmt_acc[(r["arm"], r["seed"])] = [float(r["right"][fmt_ids == f].mean()) for f in range(len(FORMATS))]

    rows = []
    for i, lab in enumerate(labels):
        row = {"source length (chars)": lab, "inputs": counts[i]}
        for arm in c["arms"]:
            row[f"{arm}: exact match"] = pm([by_bin[(arm, s)][i] for s in ctx.seeds], 3)
        rows.append(row)
    row = {"source length (chars)": "all", "inputs": len(lengths)}
    for arm in c["arms"]:
        row[f"{arm}: exact match"] = pm([r["final_exact"] for r in runs if r["arm"] == arm], 3)
    rows.append(row)
    ctx.write_table("accuracy_by_length", rows, title=f"Exact match on held-out dates by input length after "
                    f"{c['steps']} steps ({seeds_text(ctx.seeds)})")
    fmt_rows = []
    for f in range(len(FORMATS)):
        ex = human(int(task0.eval_days[0]), f)
        row = {"format": f, "example": ex, "chars": len(ex)}
        for arm in c["arms"]:
            row[arm] = pm([fmt_acc[(arm, s)][f] for s in ctx.seeds], 3)
        fmt_rows.append(row)
    ctx.write_table("accuracy_by_format", fmt_rows, title="Exact match by format (same held-out days)")
    copy_rows = []
    for L in c["copy_eval_lengths"]:
        row = {"digits": L}
        for arm in c["arms"]:
            rs = [r for r in copy_runs if r["arm"] == arm]
            row[f"{arm}: exact match"] = pm([r["exact"][L] for r in rs], 3)
            row[f"{arm}: digit accuracy"] = pm([r["chars"][L] for r in rs], 3)
        copy_rows.append(row)
    ctx.write_table("copy_by_length", copy_rows, title=f"Copying digit strings: accuracy by length after "
                    f"{c['copy_steps']} steps ({seeds_text(copy_seeds)})")
    ctx.write_json("curves.json", {"dates": [{k: v for k, v in r.items() if k not in ("model", "task")} for r in runs],
                                   "copy": copy_runs})

    fig, axes = pyplot().subplots(1, 3, figsize=(17, 4.6))
    for arm in c["arms"]:
        rs = [r for r in runs if r["arm"] == arm]
        shade(axes[0], rs[0]["history"]["step"], [r["history"]["exact_match"] for r in rs], arm, COLORS[arm])
        shade(axes[1], np.arange(len(labels)), [by_bin[(arm, s)] for s in ctx.seeds], arm, COLORS[arm], style="o-")
    axes[0].set_xlabel(f"training step (batch {c['batch_size']})")
    axes[0].set_ylabel(f"exact match, {c['curve_eval_size']} held-out dates (greedy)")
    axes[0].set_title("dates: learning curves")
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels([f"{lab}\n(n={n})" for lab, n in zip(labels, counts)], fontsize=8)
    axes[1].set_xlabel("length of the source string (characters)")
    axes[1].set_ylabel("exact match (greedy)")
    axes[1].set_title(f"dates: accuracy vs input length after {c['steps']} steps")
    Ls = c["copy_eval_lengths"]
    for arm in c["arms"]:
        rs = [r for r in copy_runs if r["arm"] == arm]
        shade(axes[2], Ls, [[r["exact"][L] for L in Ls] for r in rs], f"{arm}: exact match", COLORS[arm], style="o-")
        shade(axes[2], Ls, [[r["chars"][L] for L in Ls] for r in rs], f"{arm}: digit accuracy", COLORS[arm],
              style="s--")
    axes[2].set_xlabel(f"digits to copy (trained on {c['copy_min_len']}-{c['copy_max_len']})")
    axes[2].set_ylabel("accuracy (greedy)")
    axes[2].set_title(f"copying digit strings: accuracy vs length after {c['copy_steps']} steps")
    for ax in axes:
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Date normalizer with vs without attention (seq2seq, hidden {c['hidden_size']}, "
                 f"{len(ctx.seeds)} seed{'s' if len(ctx.seeds) > 1 else ''}; band: min-max)")
    fig.tight_layout()
    ctx.save_figure(fig, "attention_accuracy.png")
    return {arm: {"exact_match": mean_std([r["final_exact"] for r in runs if r["arm"] == arm]),
                  "by_length": dict(zip(labels, np.mean([by_bin[(arm, s)] for s in ctx.seeds], 0).tolist())),
                  "seconds": mean_std([r["seconds"] for r in runs if r["arm"] == arm]),
                  "copy_exact_by_length": {L: mean_std([r["exact"][L] for r in copy_runs if r["arm"] == arm])[0]
                                           for L in c["copy_eval_lengths"]}}
            for arm in c["arms"]}
