"""Command line: ``python -m fusedrnn bench ...``, ``python -m fusedrnn train ...`` and
``python -m fusedrnn experiment ...`` (also the console script ``fusedrnn``)."""

from __future__ import annotations

import argparse
import os
import sys
import time


def _bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import suite

    device = torch.device(args.device) if args.device else suite.default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        print("fusedrnn bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "quick" if args.quick else (args.preset or ("anchors" if device.type == "cuda" else "cpu"))
    if args.backend:
        from .ops.dispatch import check_backend_name

        for b in args.backend:
            try:
                check_backend_name(b)
            except ValueError as e:
                print(f"fusedrnn bench: --backend: {e}", file=sys.stderr)
                return 2
    t0 = time.time()
    if preset == "models":
        from .bench.models import run_models
        from .ops.dispatch import available_backends

        backends = args.backend or ["auto"] + [b for b in available_backends(device) if b != "reference"]
        records = run_models(device, backends, args.out, reps=args.reps or 10, budget_s=args.budget_s)
    else:
        records = suite.run(preset, device=device, dtype=args.dtype, out=args.out,
                            modes=args.mode or suite.MODES, variants=args.variant or None,
                            backends=args.backend or None, reps=args.reps, progress=not args.no_progress,
                            budget_s=args.budget_s)
    title = f"fusedrnn bench --preset {preset} on {records[0]['device'] if records else device} " \
            f"(torch {torch.__version__}, {time.time() - t0:.0f} s)"
    suite.print_table(records, title)
    if args.out:
        from .bench.harness import device_slug

        md = os.path.join(args.out, f"{device_slug(device)}-{preset}.md")
        with open(md, "w") as f:
            f.write(f"{title}\n\n{suite.markdown_table(records)}\n")
        print(f"records appended to {os.path.join(args.out, device_slug(device) + '.jsonl')}; table in {md}")
        if not args.no_plots:
            try:
                from .bench.plots import plot_all

                for path in plot_all(records, args.out, f"{device_slug(device)}-{preset}"):
                    print(f"plot: {path}")
            except ImportError as e:
                print(f"no plots ({e}): pip install matplotlib", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    from .bench.suite import DTYPES, MODES, PRESETS, VARIANTS

    parser = argparse.ArgumentParser(prog="fusedrnn", description="fusedrnn command line")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run the benchmark suite on the default device (CUDA if present)")
    b.add_argument("--preset", choices=sorted(PRESETS) + ["models"],
                   help="default: anchors on CUDA, cpu on the CPU; models: training steps of the reference models")
    b.add_argument("--quick", action="store_true", help="the quick preset (under 2 minutes on 2 cores)")
    b.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    b.add_argument("--dtype", choices=sorted(DTYPES), help="override the preset's dtypes")
    b.add_argument("--mode", action="append", choices=MODES, help="fwd and/or fwd+bwd (default both)")
    b.add_argument("--variant", action="append", choices=list(VARIANTS), help="default: the preset's")
    b.add_argument("--backend", action="append", help="fusedrnn backends to time (default: all available)")
    b.add_argument("--reps", type=int, help="timed repetitions per provider")
    b.add_argument("--threads", type=int, help="torch CPU threads")
    b.add_argument("--budget-s", type=float, help="seconds of timed runs per group at most (at least 3 runs)")
    b.add_argument("--out", default="benchmarks/results", help="directory for records and tables ('' for none)")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    from .train.cli import add_parser as _add_train_parser

    _add_train_parser(sub)
    from .experiments.cli import add_parser as _add_experiment_parser

    _add_experiment_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "bench":
        if args.reps is not None and args.reps < 1:
            parser.error("--reps must be >= 1")
        if args.threads is not None and args.threads < 1:
            parser.error("--threads must be >= 1")
        if args.budget_s is not None and args.budget_s <= 0:
            parser.error("--budget-s must be > 0")
        return _bench(args)
    if args.command == "train":
        from .train.cli import run as _train

        return _train(args, parser)
    if args.command == "experiment":
        from .experiments.cli import run as _experiment

        return _experiment(args, argv, parser)
    return 1


if __name__ == "__main__":
    sys.exit(main())
