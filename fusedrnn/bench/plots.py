"""PNG plots of benchmark records (matplotlib, headless).

- ``speedup-batch``:  speedup over torch.nn.LSTM (plain) against batch size, one line per
  fusedrnn provider and (T, H, dtype, mode) family with at least two batch sizes;
- ``speedup-hidden``: the same against hidden size;
- ``regularized-cost``: time of each regularized variant over torch's plain time, per point.

Ratios come from records of the same run (``baseline / provider``; > 1 is faster).
"""

from __future__ import annotations

import os
from collections import defaultdict

from ..report import pyplot, save_png

BASELINES = ("cudnn", "torch-cpu")


def _index(records):
    idx = {}
    for r in records:
        idx[(r["provider"], r["variant"], r["mode"], r["dtype"], r["B"], r["T"], r["I"], r["H"])] = r["median_ms"]
    return idx


def _base(idx, r):
    for b in BASELINES:
        t = idx.get((b, "plain", r["mode"], r["dtype"], r["B"], r["T"], r["I"], r["H"]))
        if t is not None:
            return t
    return None


def _speedup_series(records, xkey):
    idx = _index(records)
    series = defaultdict(list)
    fixed = [k for k in ("B", "T", "I", "H") if k != xkey]
    for r in records:
        if r["variant"] != "plain" or not r["provider"].startswith("fusedrnn-"):
            continue
        base = _base(idx, r)
        if base is None:
            continue
        label = f"{r['provider'][9:]} " + " ".join(f"{k}={r[k]}" for k in fixed if k != "I") + \
            f" {r['dtype']} {r['mode']}"
        series[label].append((r[xkey], base / r["median_ms"]))
    return {k: sorted(v) for k, v in series.items() if len({x for x, _ in v}) >= 2}


def plot_all(records, out_dir: str, stem: str) -> list[str]:
    """Write the plots that the records support; returns the paths written."""
    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    device = records[0]["device"] if records else "?"
    paths = []
    for xkey, name, xlabel in (("B", "speedup-batch", "batch size B"), ("H", "speedup-hidden", "hidden size H")):
        series = _speedup_series(records, xkey)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, pts in series.items():
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        ax.axhline(1.0, color="gray", lw=1, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("speedup over torch.nn.LSTM (x)")
        ax.set_title(f"fusedrnn vs torch.nn.LSTM, plain LSTM, by {xlabel}\n{device}")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
        path = os.path.join(out_dir, f"{stem}-{name}.png")
        fig.tight_layout()
        save_png(fig, path)
        paths.append(path)

    idx = _index(records)
    bars = defaultdict(dict)
    for r in records:
        if r["variant"] in ("plain",) or r["variant"].startswith("model:") or not r["provider"].startswith(("fusedrnn-", "loop")):
            continue
        base = _base(idx, r)
        if base is None:
            continue
        point = f"B={r['B']} T={r['T']} H={r['H']}\n{r['dtype']} {r['mode']}"
        bars[point][f"{r['provider']} {r['variant']}"] = r["median_ms"] / base
    if bars:
        labels = sorted({k for v in bars.values() for k in v})
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
        ax.set_title(f"Cost of regularization (recurrent dropout, batch norm) over a plain LSTM\n{device}")
        ax.legend(fontsize=7)
        path = os.path.join(out_dir, f"{stem}-regularized-cost.png")
        fig.tight_layout()
        save_png(fig, path)
        paths.append(path)
    return paths
