"""Running an experiment: the run context (preset, seeds, device, output folder), the run
record (run.json: command, device, versions, duration, seeds) and results.md.

An experiment module defines ``NAME``, ``TITLE``, ``CLAIM``, ``PRESETS`` (``smoke`` /
``default`` / ``full`` -> a dict of settings, including ``seeds``) and ``run(ctx)``, which
trains, writes its figures and tables into ``ctx.out`` with :meth:`Context.save_figure` /
:meth:`Context.write_table`, and returns a JSON-able summary.  :func:`run_experiment`
does the rest (seeding, threads, timing, run.json, results.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..bench.harness import cpu_name, git_revision
from ..report import save_png, write_json, write_text
from .summary import fmt, table

PRESET_NAMES = ("smoke", "default", "full")


class ConfigError(ValueError):
    """A bad experiment setting (reported by the command line without a traceback)."""


def device_description(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores, {threads} torch thread{'s' if threads != 1 else ''}"


def git_commit() -> Optional[str]:
    """'abc1234' or 'abc1234+dirty' (tracked files changed), None outside a git checkout."""
    rev = git_revision()
    return None if rev is None else rev[0] + ("+dirty" if rev[1] else "")




def jsonable(obj: Any) -> Any:
    """Floats rounded to 6 significant digits, NaN/inf as strings, tensors as lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor) or (hasattr(obj, "tolist") and hasattr(obj, "ndim") and obj.ndim > 0):
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return str(obj)
        return float(f"{obj:.6g}")
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return jsonable(obj.item())
    return obj


@dataclass
class Context:
    """One run of one experiment."""

    name: str
    preset: str
    cfg: dict
    out: str
    device: torch.device
    seeds: list
    threads: int
    command: str
    verbose: bool = True
    figures: list = field(default_factory=list)
    tables: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)   # what data was used (recorded in run.json)
    notes: list = field(default_factory=list)  # extra lines for results.md
    t0: float = field(default_factory=time.time)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[{self.name} {time.time() - self.t0:6.1f}s] {msg}", flush=True)

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def save_figure(self, fig, name: str) -> str:
        """Save a matplotlib figure as PNG in the output folder (atomically)."""
        path = save_png(fig, self.path(name))
        if name not in self.figures:
            self.figures.append(name)
        self.log(f"figure {path}")
        return path

    def finish_figure(self, fig, title: str, name: str, axes=()) -> str:
        """Grid and legend on ``axes``, the title, a tight layout, then :meth:`save_figure`."""
        for ax in axes:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        return self.save_figure(fig, name)

    def write_table(self, name: str, rows: list[dict], columns: Optional[list[str]] = None,
                    title: Optional[str] = None) -> None:
        """rows -> name.csv (and a Markdown copy in results.md, in the order written)."""
        cols = columns or list(rows[0]) if rows else []
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: (fmt(r[c], 6) if isinstance(r.get(c), float) else r.get(c, "")) for c in cols})
        write_text(self.path(f"{name}.csv"), buf.getvalue())
        self.tables[name] = (title or name, table(rows, cols))

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path(name), jsonable(obj))


def resolve(module, preset: str, overrides: Optional[dict] = None, seeds: Optional[list] = None) -> dict:
    if preset not in PRESET_NAMES:
        raise ConfigError(f"preset must be one of {PRESET_NAMES}, got {preset!r}")
    cfg = dict(module.PRESETS["default"])
    cfg.update(module.PRESETS.get(preset, {}))
    for k, v in (overrides or {}).items():
        if k not in cfg:
            raise ConfigError(f"experiment {module.NAME!r} has no setting {k!r}; settings: {sorted(cfg)}")
        cfg[k] = v
    if seeds:
        cfg["seeds"] = list(seeds)
    return cfg


def run_experiment(module, preset: str = "default", out: Optional[str] = None, device: Optional[str] = None,
                   seeds: Optional[list] = None, threads: Optional[int] = None, overrides: Optional[dict] = None,
                   command: Optional[str] = None, verbose: bool = True,
                   progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run one experiment module and write its record; returns run.json's content."""
    cfg = resolve(module, preset, overrides, seeds)
    if device is None:
        device = "cuda" if preset == "full" and torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available")
    if threads is None:
        threads = 1 if dev.type == "cpu" and preset != "full" else torch.get_num_threads()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    if out is None:
        out = os.path.join("docs", "figures", module.NAME + ("" if preset == "default" else f"-{preset}"))
    os.makedirs(out, exist_ok=True)
    ctx = Context(name=module.NAME, preset=preset, cfg=cfg, out=out, device=dev, seeds=list(cfg["seeds"]),
                  threads=threads, command=command or f"python -m fusedrnn experiment {module.NAME}",
                  verbose=verbose)
    ctx.log(f"{module.TITLE}: preset {preset}, device {device_description(dev, threads)}, seeds {ctx.seeds}, "
            f"out {out}")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.time()
    try:
        summary = module.run(ctx)
    finally:
        torch.set_num_threads(old_threads)
    duration = time.time() - t0
    import numpy
    record = {
        "experiment": module.NAME,
        "title": module.TITLE,
        "claim": module.CLAIM,
        "command": ctx.command,
        "preset": preset,
        "config": cfg,
        "seeds": ctx.seeds,
        "device": device_description(dev, threads),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "git": git_commit(),
        "started": started,
        "duration_s": round(duration, 1),
        "data": ctx.data,
        "figures": ctx.figures,
        "tables": [f"{n}.csv" for n in ctx.tables],
        "summary": summary,
    }
    ctx.write_json("run.json", record)
    write_text(ctx.path("results.md"), results_markdown(record, ctx))
    ctx.log(f"done in {duration:.0f} s; record {ctx.path('run.json')}")
    return record


def results_markdown(record: dict, ctx: Context) -> str:
    lines = [f"# {record['title']}", "", f"Claim: {record['claim']}", "",
             f"    {record['command']}", "",
             f"- device: {record['device']}",
             f"- torch {record['torch']}, python {record['python']}, fusedrnn git {record['git']}",
             f"- started {record['started']}, duration {record['duration_s']:.0f} s",
             f"- preset: {record['preset']}; seeds: {record['seeds']}"]
    for k, v in record["data"].items():
        lines.append(f"- {k}: {v}")
    lines.append("")
    for title, table in ctx.tables.values():
        lines += [f"## {title}", "", table, ""]
    for n in ctx.notes:
        lines += [n, ""]
    for f in record["figures"]:
        lines += [f"![{f}]({f})", ""]
    lines += ["Settings:", "", "```json", json.dumps(jsonable(record["config"]), indent=1), "```", ""]
    return "\n".join(lines)


def parse_value(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


__all__ = ["ConfigError", "Context", "PRESET_NAMES", "jsonable", "parse_value", "resolve", "run_experiment"]
