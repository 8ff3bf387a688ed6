"""``python -m fusedrnn bench ...``: the argument parser and its entry point."""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an argparse subparsers object."""
    from .suite import DTYPES, MODES, PRESETS, VARIANTS

    b = sub.add_parser("bench", help="run the benchmark suite on the default device (CUDA if present)")
    b.add_argument("--preset", choices=sorted(PRESETS) + ["models"],
                   help="default: anchors on CUDA, cpu on the CPU; models: training steps of the reference models")
    b.add_argument("--quick", action="store_true", help="the quick preset (under 2 minutes on 2 cores)")
    b.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    b.add_argument("--dtype", choices=sorted(DTYPES), help="override the preset's dtypes")
    b.add_argument("--mode", action="append", choices=MODES, help="fwd, fwd+bwd and/or infer (default: the preset's)")
    b.add_argument("--variant", action="append", choices=list(VARIANTS), help="default: the preset's")
    b.add_argument("--backend", action="append", help="fusedrnn backends to time (default: all available)")
    b.add_argument("--reps", type=int, help="timed repetitions per provider")
    b.add_argument("--threads", type=int, help="torch CPU threads")
    b.add_argument("--budget-s", type=float, help="seconds of timed runs per group at most (at least 3 runs)")
    b.add_argument("--out", default="benchmarks/results", help="directory for records and tables ('' for none)")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    b.add_argument("--with-reference", action="store_true",
                   help="count the reference backend (the oracle) as a contender on the screen and in the plots")
    return b


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``fusedrnn bench`` with parsed arguments."""
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error("--budget-s must be > 0")
    import torch

    from . import suite

    device = torch.device(args.device) if args.device else suite.default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        print("fusedrnn bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "quick" if args.quick else (args.preset or ("anchors" if device.type == "cuda" else "cpu"))
    if args.backend:
        from ..ops.decision import check_backend_name

        for b in args.backend:
            try:
                check_backend_name(b)
            except ValueError as e:
                print(f"fusedrnn bench: --backend: {e}", file=sys.stderr)
                return 2
    t0 = time.time()
    if preset == "models":
        from .models import run_models
        from ..ops.decision import available_backends

        backends = args.backend or ["auto"] + [b for b in available_backends(device) if b != "reference"]
        records = run_models(device, backends, args.out, reps=args.reps or 10, budget_s=args.budget_s)
    else:
        records = suite.run(preset, device=device, dtype=args.dtype, out=args.out,
                            modes=args.mode or None, variants=args.variant or None,
                            backends=args.backend or None, reps=args.reps, progress=not args.no_progress,
                            budget_s=args.budget_s)
    title = f"fusedrnn bench --preset {preset} on {records[0]['device'] if records else device} " \
            f"(torch {torch.__version__}, {time.time() - t0:.0f} s)"
    suite.print_table(records, title, include_reference=args.with_reference)
    if args.out:
        from .harness import device_slug

        md = os.path.join(args.out, f"{device_slug(device)}-{preset}.md")
        with open(md, "w") as f:
            f.write(f"{title}\n\n{suite.markdown_table(records)}\n")
        print(f"records appended to {os.path.join(args.out, device_slug(device) + '.jsonl')}; table in {md}")
        if not args.no_plots:
            try:
                from .plots import plot_all

                for path in plot_all(records, args.out, f"{device_slug(device)}-{preset}",
                                     include_reference=args.with_reference):
                    print(f"plot: {path}")
            except ImportError as e:
                print(f"no plots ({e}): pip install matplotlib", file=sys.stderr)
    return 0
