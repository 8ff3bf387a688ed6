"""PNG plots of benchmark records (matplotlib, headless): what a user decides with.

- ``speedup-batch``:  speedup of the best fusedrnn backend over torch.nn.LSTM (plain)
  against batch size, one line per (T, H, dtype, mode) family with at least two batch sizes;
- ``speedup-hidden``: the same against hidden size;
- ``regularized-cost``: per point, the best fusedrnn backend's time for each variant, and
  the per-step Python loop's for the regularized variant, over torch's plain time.

The reference backend (the oracle, slow by design) is left out unless include_reference.
Ratios come from records of the same run (``baseline / provider``; > 1 is faster).
"""

from __future__ import annotations

import os
from collections import defaultdict

from ..report import pyplot, save_png
from .providers import VARIANTS

BASELINES = ("cudnn", "torch-cpu")


def _index(records):
    idx = {}
    for r in records:
        idx[(r["provider"], r["variant"], r["mode"], r["dtype"], r["B"], r["T"], r["I"], r["H"])] = r["median_ms"]
    return idx


def _point(r) -> tuple:
    return (r["mode"], r["dtype"], r["B"], r["T"], r["I"], r["H"])


def _base(idx, r):
    for b in BASELINES:
        t = idx.get((b, "plain") + _point(r))
        if t is not None:
            return t
    return None


def fused(provider: str, include_reference: bool = False) -> bool:
    """A fusedrnn provider that competes (the reference backend only on request)."""
    return provider.startswith("fusedrnn-") and (include_reference or provider != "fusedrnn-reference")


def best_times(records, include_reference: bool = False) -> dict:
    """(variant, mode, dtype, B, T, I, H) -> (provider, median ms) of the fastest fusedrnn backend."""
    best = {}
    for r in records:
        if not fused(r["provider"], include_reference):
            continue
        key = (r["variant"],) + _point(r)
        if key not in best or r["median_ms"] < best[key][1]:
            best[key] = (r["provider"], r["median_ms"])
    return best


def _speedup_series(records, xkey, include_reference=False):
    idx = _index(records)
    series = defaultdict(list)
    fixed = [k for k in ("B", "T", "H") if k != xkey]
    for (variant, mode, dtype, B, T, I, H), (_, ms) in best_times(records, include_reference).items():
        if variant != "plain":
            continue
        r = dict(mode=mode, dtype=dtype, B=B, T=T, I=I, H=H)
        base = _base(idx, r)
        if base is None:
            continue
        label = "best fusedrnn " + " ".join(f"{k}={r[k]}" for k in fixed) + f" {dtype} {mode}"
        series[label].append((r[xkey], base / ms))
    return {k: sorted(v) for k, v in series.items() if len({x for x, _ in v}) >= 2}


def plot_all(records, out_dir: str, stem: str, include_reference: bool = False) -> list[str]:
    """Write the plots that the records support; returns the paths written."""
    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    device = records[0]["device"] if records else "?"
    paths = []
    for xkey, name, xlabel in (("B", "speedup-batch", "batch size B"), ("H", "speedup-hidden", "hidden size H")):
        series = _speedup_series(records, xkey, include_reference)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, pts in series.items():
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        ax.axhline(1.0, color="gray", lw=1, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("speedup over torch.nn.LSTM (x)")
        ax.set_title(f"best fusedrnn backend vs torch.nn.LSTM, plain LSTM, by {xlabel}\n{device}")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
        path = os.path.join(out_dir, f"{stem}-{name}.png")
        fig.tight_layout()
        save_png(fig, path)
        paths.append(path)

    idx = _index(records)
    bars = defaultdict(dict)
    for (variant, *point), (_, ms) in best_times(records, include_reference).items():
        if variant not in VARIANTS:
            continue
        r = dict(zip(("mode", "dtype", "B", "T", "I", "H"), point))
        base = _base(idx, r)
        if base is None:
            continue
        key = f"B={r['B']} T={r['T']} H={r['H']}\n{r['dtype']} {r['mode']}"
        bars[key][f"fusedrnn, {variant}"] = ms / base
        loop = idx.get(("loop", "variational+bn") + tuple(point))
        if loop is not None:
            bars[key]["loop, variational+bn"] = loop / base
    if bars:
        order = [f"fusedrnn, {v}" for v in VARIANTS] + ["loop, variational+bn"]
        labels = [k for k in order if any(k in v for v in bars.values())]
        points = list(bars)
        fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(points)), 5))
        width = 0.8 / max(len(labels), 1)
        for i, lab in enumerate(labels):
            ys = [bars[p].get(lab, 0.0) for p in points]
            ax.bar([j + i * width for j in range(len(points))], ys, width, label=lab)
        ax.axhline(1.0, color="gray", lw=1, ls="--")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(points))])
        ax.set_xticklabels(points, fontsize=7)
        ax.set_ylabel("time / torch.nn.LSTM plain time")
        ax.set_title(f"Cost of regularization: the best fusedrnn backend and the Python loop\n{device}")
        ax.legend(fontsize=7)
        path = os.path.join(out_dir, f"{stem}-regularized-cost.png")
        fig.tight_layout()
        save_png(fig, path)
        paths.append(path)
    return paths
