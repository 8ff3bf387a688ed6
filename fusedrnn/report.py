"""Writing results, shared by bench, train and experiments: atomic file writes, Markdown
tables, and matplotlib figures (Agg backend, PNGs written atomically).

Atomic: a file is written to a temporary name in the same directory, flushed to disk,
then renamed over the target, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence


def atomic_write(path: str, write: Callable) -> None:
    """Call ``write(f)`` on a binary file that replaces ``path`` once complete."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of string cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str, dpi: int = 110) -> str:
    """Save a figure as PNG atomically and close it; returns the path."""
    tmp = f"{path}.tmp.{os.getpid()}.png"
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    pyplot().close(fig)
    return path


__all__ = ["atomic_write", "markdown_table", "pyplot", "save_png", "write_json", "write_text"]
