"""The benchmark suite: presets, the run, the table.

    python -m fusedrnn bench [--preset cpu|quick|anchors|cell] [--device D] [--dtype T] [--out DIR]

Each group (one shape, one mode) times every provider and variant in the same run,
alternating, and reports medians; ratios are taken within the group.  Records are
appended to <out>/<device-slug>.jsonl (default out: benchmarks/results).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from .. import report
from . import harness
from .providers import (DEFAULT_MODES, GRU_PREFIX, MODES, VARIANTS, build_cell_fn, build_layer_fn, plain_of,
                        providers_for, serves, supports, torch_provider_name)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "fp64": torch.float64, "float64": torch.float64}


@dataclass(frozen=True)
class Point:
    B: int
    T: int
    I: int
    H: int
    dtype: str = "fp32"
    cell: bool = False
    layers: int = 1
    rnn: str = "lstm"  # or "gru": its variants are recorded as "gru:<variant>"


_GPU_GRID = (
    [Point(16, 1024, 768, 768, d) for d in ("bf16", "fp16")]
    + [Point(b, 1024, 768, 768, "bf16") for b in (2, 8, 32, 128, 256)]
    + [Point(64, 50, 256, 512, "fp32"), Point(64, 512, 128, 128, "fp32"),
       Point(8, 1000, 1024, 1024, "fp16"), Point(256, 256, 1024, 1024, "bf16"),
       Point(64, 50, 256, 512, "fp32", rnn="gru")]
)
_CPU_SHAPES = ((32, 100, 256), (8, 100, 256), (64, 50, 512), (1, 100, 256), (128, 35, 650))

PRESETS: dict[str, dict] = {
    # The GPU grid of benchmarks/gpu_check.sh: the FlashRNN point (B=16, T=1024, H=768) and
    # the haste point (B=64, T=50, H=512, I=256, fp32) among them.
    # The Python-loop baseline runs at the first point only (it is slow and changes little).
    "anchors": dict(points=_GPU_GRID, variants=("plain", "variational+bn"), loop="first"),
    # The CPU grid: B=1 (streaming inference) and the medium word-LM shape (B=128, T=35,
    # I=H=650) beside the original three; training and inference; the LSTM, then the GRU.
    "cpu": dict(points=[Point(B, T, H, H, rnn=rnn) for rnn in ("lstm", "gru") for B, T, H in _CPU_SHAPES],
                variants=tuple(VARIANTS), modes=("fwd+bwd", "infer")),
    "quick": dict(points=[Point(16, 50, 128, 128), Point(32, 50, 256, 256)],
                  variants=("plain", "variational+bn")),
    "cell": dict(points=[Point(b, 1, h, h, cell=True) for b in (32, 128) for h in (256, 1024)],
                 variants=("plain", "variational+bn")),
    # The module's per-call cost over nn.LSTM as users meet it: the default construction
    # (backend "auto") against torch's LSTM at the word-LM size of pytorch/examples (two
    # layers, embedding and hidden 100, batch 20, bptt 35), and one streaming step.
    "overhead": dict(points=[Point(20, 35, 100, 100, layers=2), Point(1, 1, 100, 100)], variants=("plain",),
                     backends=["auto"], loop=False, reps=300),
}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(preset: str = "cpu", *, device: Optional[torch.device] = None, dtype: Optional[str] = None,
        out: Optional[str] = "benchmarks/results", modes=None, variants=None, backends=None,
        reps: Optional[int] = None, progress: bool = True, points=None,
        budget_s: Optional[float] = None) -> list[dict]:
    """Run a preset; returns the records, also appended to <out>/<device>.jsonl after every
    group, so that a run cut short keeps what it measured.

    The preset's ``loop`` is True (the loop baseline at every point), False, or "first"."""
    device = device or default_device()
    spec = PRESETS[preset]
    points = points or spec["points"]
    variants = variants or spec["variants"]
    modes = modes or spec.get("modes", DEFAULT_MODES)
    backends = backends or spec.get("backends")
    env = harness.environment(device)
    cuda = device.type == "cuda"
    reps = reps or spec.get("reps") or (20 if cuda else 7)
    groups = [(p, mode) for p in points for mode in modes]
    records: list[dict] = []
    path = os.path.join(out, harness.device_slug(device) + ".jsonl") if out else None
    loop = spec.get("loop", True)
    bar = _progress(len(groups)) if progress else None
    # fp32 on a GPU: TF32 allowed for every provider, as cuDNN does by default
    # (torch.backends.cudnn.allow_tf32) and fusedrnn does when matmul.allow_tf32 is set.
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    for p, mode in groups:
        dt = DTYPES[dtype or p.dtype]
        fns = {}
        with_loop = loop is True or (loop == "first" and p == points[0])
        for prov in providers_for(device, backends, include_loop=with_loop):
            if (p.cell or p.layers != 1) and prov == "loop":
                continue
            for base in variants:
                var = base if p.rnn == "lstm" else GRU_PREFIX + base
                if not supports(prov, var):
                    continue
                if not p.cell and serves(prov, var, p.B, p.T, p.I, p.H, dt, device) is not None:
                    continue
                if p.B == 1 and mode != "infer" and VARIANTS[base].get("batch_norm"):
                    continue  # batch statistics of one row do not exist
                if p.cell:
                    fns[(prov, var)] = build_cell_fn(prov, var, mode, p.B, p.H, dt, device, rotate=4 if cuda else 1)
                else:
                    fns[(prov, var)] = build_layer_fn(prov, var, mode, p.B, p.T, p.I, p.H, dt, device,
                                                      rotate=4 if cuda else 1, layers=p.layers)
        timings = harness.time_group(fns, device, warmup=3 if cuda else 2, reps=reps, rotate=4 if cuda else 1,
                                     budget_s=budget_s)
        group = [harness.make_record(env, provider=prov, variant=var, mode=mode, dtype=dt,
                                     B=p.B, T=p.T, I=p.I, H=p.H, timing=tm, L=p.layers)
                 for (prov, var), tm in timings.items()]
        records += group
        if path:
            harness.append_records(group, path)
        if bar:
            bar.advance(f"B={p.B} T={p.T} H={p.H} {mode}")
        del fns
    if bar:
        bar.close()
    torch.backends.cuda.matmul.allow_tf32 = tf32_before
    return records


# ---- the table ------------------------------------------------------------------------------


def _ms(t: float) -> str:
    return f"{t:.2f}" if t >= 1 else f"{t:.3f}"


def summarize(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (shape, dtype, mode, variant), each provider's median,
    and each fusedrnn provider's speedup over torch's plain LSTM (plain GRU for a GRU
    variant) and over the loop."""
    groups: dict[tuple, dict] = {}
    for r in records:
        key = (r["B"], r["T"], r["I"], r["H"], r["dtype"], r["mode"])
        groups.setdefault(key, {})[(r["provider"], r["variant"])] = r["median_ms"]
    providers = []
    for r in records:
        if r["provider"] not in providers:
            providers.append(r["provider"])
    torch_names = [p for p in providers if p in ("cudnn", "torch-cpu")]
    fused = [p for p in providers if p.startswith("fusedrnn-")]
    header = ["B", "T", "I", "H", "dtype", "mode", "variant"] + [f"{p} ms" for p in providers]
    header += [f"{p.split('-', 1)[1]} vs {tn}" for p in fused for tn in torch_names]
    header += [f"{p.split('-', 1)[1]} vs loop" for p in fused if "loop" in providers]
    rows = []
    for key, g in groups.items():
        present = {v for (_, v) in g}
        known = [v for v in VARIANTS] + [GRU_PREFIX + v for v in VARIANTS]
        variants_order = [v for v in known if v in present] + sorted(present - set(known))
        for var in variants_order:
            if not any(v == var for (_, v) in g):
                continue
            row = [str(k) for k in key] + [var]
            for p in providers:
                t = g.get((p, var))
                row.append("-" if t is None else _ms(t))
            for p in fused:
                for tn in torch_names:
                    # regularized variants against torch's plain LSTM (GRU); model rows against
                    # the same model on torch's modules
                    base, t = g.get((tn, plain_of(var))) or g.get((tn, var)), g.get((p, var))
                    row.append("-" if base is None or t is None else f"{base / t:.2f}x")
            if "loop" in providers:
                for p in fused:
                    base, t = g.get(("loop", var)), g.get((p, var))
                    row.append("-" if base is None or t is None else f"{base / t:.2f}x")
            rows.append(row)
    return header, rows


def markdown_table(records: list[dict]) -> str:
    return report.markdown_table(*summarize(records))


_SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


def console_rows(records: list[dict], include_reference: bool = False) -> tuple[list[str], list[list[str]]]:
    """The screen table (at most 110 columns): per shape, mode and variant, torch's plain
    LSTM, the best fusedrnn backend, its speedup over torch and over the per-step loop.  The
    full table (every provider) is :func:`markdown_table`, written beside the records."""
    from .plots import best_times  # the plots' notion of "best", so screen and plots agree

    base, loop = {}, {}
    for r in records:
        key = (r["mode"], r["dtype"], r["B"], r["T"], r["I"], r["H"])
        if r["provider"] in ("cudnn", "torch-cpu") and r["variant"] == plain_of(r["variant"]):
            base[(r["variant"],) + key] = r["median_ms"]
        elif r["provider"] == "loop":
            loop[(r["variant"],) + key] = r["median_ms"]
    header = ["shape", "dtype", "mode", "variant", "nn.LSTM/GRU", "best fusedrnn", "ms", "speedup", "vs loop"]
    rows = []
    for (variant, mode, dtype, B, T, I, H), (prov, ms) in best_times(records, include_reference).items():
        key = (mode, dtype, B, T, I, H)
        b, lp = base.get((plain_of(variant),) + key), loop.get((variant,) + key)
        rows.append([f"B{B} T{T} I{I} H{H}", _SHORT_DTYPE.get(dtype, dtype), mode, variant,
                     "-" if b is None else _ms(b), prov[len("fusedrnn-"):], _ms(ms),
                     "-" if b is None else f"{b / ms:.2f}x", "-" if lp is None else f"{lp / ms:.1f}x"])
    return header, rows


def print_table(records: list[dict], title: str = "", include_reference: bool = False) -> None:
    """Print the screen table (console_rows) in at most 110 columns."""
    header, rows = console_rows(records, include_reference)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(report.markdown_table(header, rows))
        return
    table = Table(title=title, show_lines=False, pad_edge=False)
    for h in header:
        table.add_column(h, justify="left" if h in ("shape", "variant", "best fusedrnn") else "right", no_wrap=True)
    for r in rows:
        table.add_row(*r)
    Console(width=110).print(table)


class _progress:
    def __init__(self, total: int):
        self.total, self.done = total, 0
        try:
            from rich.progress import Progress

            self.p = Progress(transient=True)
            self.p.start()
            self.task = self.p.add_task("benchmark", total=total)
        except ImportError:
            self.p = None

    def advance(self, what: str) -> None:
        self.done += 1
        if self.p:
            self.p.update(self.task, advance=1, description=what)
        else:
            print(f"[{self.done}/{self.total}] {what}", flush=True)

    def close(self) -> None:
        if self.p:
            self.p.stop()


__all__ = ["PRESETS", "Point", "default_device", "markdown_table", "print_table", "run", "summarize",
           "torch_provider_name"]
