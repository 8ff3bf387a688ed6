"""Summaries of benchmark records: ``python -m fusedrnn.bench.summary RECORDS.jsonl... [--short]``.

--short prints, per shape / dtype / mode, the torch baseline, the best fusedrnn backend
on the plain LSTM and its speedup, the regularized (variational+bn) time and its cost
relative to our plain kernel, and its speedup over the per-step loop — the targets of
the GPU grid.  Without --short, the full table of fusedrnn.bench.suite.summarize.
"""

from __future__ import annotations

import argparse
import sys

from .harness import read_records


def short_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    groups: dict[tuple, dict] = {}
    for r in records:
        key = (r["B"], r["T"], r["I"], r["H"], r["dtype"], r["mode"])
        groups.setdefault(key, {})[(r["provider"], r["variant"])] = r["median_ms"]
    header = ["B", "T", "I", "H", "dtype", "mode", "torch ms", "best plain", "plain ms", "vs torch",
              "reg ms", "reg/plain", "loop ms", "vs loop"]
    rows = []
    for key, g in groups.items():
        base = g.get(("cudnn", "plain"), g.get(("torch-cpu", "plain")))
        fused = {p: t for (p, v), t in g.items() if v == "plain" and p.startswith("fusedrnn-")}
        best = min(fused, key=fused.get) if fused else None
        reg_name = "variational+bn"
        reg = g.get((best, reg_name)) if best else None
        loop = g.get(("loop", reg_name))
        f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        rows.append([str(k) for k in key] + [
            f(base), best[len("fusedrnn-"):] if best else "-", f(fused.get(best)),
            "-" if not (base and best) else f"{base / fused[best]:.2f}x", f(reg),
            "-" if not (reg and best) else f"{reg / fused[best]:.2f}x", f(loop),
            "-" if not (reg and loop) else f"{loop / reg:.1f}x"])
    return header, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fusedrnn.bench.summary")
    ap.add_argument("records", nargs="+", help="benchmark record files (.jsonl)")
    ap.add_argument("--short", action="store_true", help="the target table only")
    args = ap.parse_args(argv)
    records = [r for path in args.records for r in read_records(path)]
    if not records:
        print("no records")
        return 1
    if args.short:
        header, rows = short_rows(records)
    else:
        from .suite import summarize

        header, rows = summarize(records)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
