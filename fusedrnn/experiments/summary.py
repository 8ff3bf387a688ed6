"""Numbers and figures of experiment results: formatting, mean ± std over seeds, Markdown
rows, and the mean-with-band curve of several runs."""

from __future__ import annotations

import math
from typing import Any, Optional

from ..report import markdown_table


def fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.{digits}g}"
    return str(v)


def mean_std(values) -> tuple[float, float]:
    vals = [float(v) for v in values]
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s


def pm(values, digits: int = 4) -> str:
    """'mean ± std (n seeds)' or the single value."""
    vals = list(values)
    if len(vals) == 1:
        return fmt(float(vals[0]), digits)
    m, s = mean_std(vals)
    return f"{fmt(m, digits)} ± {fmt(s, 2)}"


def seeds_text(seeds) -> str:
    """'seed 0' or '3 seeds [0, 1, 2], mean ± std'."""
    seeds = list(seeds)
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds {seeds}, mean ± std"


def table(rows: list[dict], columns: Optional[list[str]] = None) -> str:
    """A Markdown table of result rows (dicts), numbers formatted by :func:`fmt`."""
    if not rows:
        return ""
    cols = columns or list(rows[0])
    return markdown_table(cols, [[fmt(r.get(c, "")) for c in cols] for r in rows])


def shade(ax, x, runs, label: str, color=None, style: str = "-", log: bool = False):
    """Plot the mean of several runs (lists of equal length) with a min-max band."""
    import numpy as np

    a = np.asarray(runs, dtype=float)
    if a.ndim == 1:
        a = a[None]
    mid = np.exp(np.log(a).mean(0)) if log else a.mean(0)
    line, = ax.plot(x, mid, style, color=color, label=label + (f" (mean of {len(a)})" if len(a) > 1 else ""))
    if len(a) > 1:
        ax.fill_between(x, a.min(0), a.max(0), color=line.get_color(), alpha=0.18, linewidth=0)
    return line


__all__ = ["fmt", "mean_std", "pm", "seeds_text", "shade", "table"]
