"""``python -m fusedrnn experiment NAME ...``: the argument parser and its entry point."""

from __future__ import annotations

import argparse
import shlex
import sys

EPILOG = """\
experiments (default sizes: minutes each on a 2-core CPU; --full: the GPU-sized runs):
{names}

Outputs go to docs/figures/NAME (docs/figures/NAME-full with --full): PNG figures, CSV
tables, results.md and run.json (command, device, versions, duration, seeds).
'python -m fusedrnn experiment all' runs the five one after the other.
"""


def _kv(text: str):
    from .run import parse_value

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip().replace("-", "_"), parse_value(v)


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``experiment`` subcommand to an argparse subparsers object."""
    from . import EXPERIMENTS

    names = "\n".join(f"  {n:10s} {what}" for n, (_, what) in EXPERIMENTS.items())
    p = sub.add_parser("experiment", help="reproduce a claim (dropout, batch norm, gradients, attention, NTM) with plots",
                       description="Run one of the experiments of docs/EXPERIMENTS.md.",
                       epilog=EPILOG.format(names=names), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=list(EXPERIMENTS) + ["all", "list"], help="the experiment ('list': print them)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the larger runs, for a GPU")
    size.add_argument("--smoke", action="store_true", help="a few steps of every part (seconds; for tests)")
    p.add_argument("--out", help="output folder (default docs/figures/NAME[-full|-smoke]; with 'all': its parent)")
    p.add_argument("--device", help="cpu or cuda (default: cpu; cuda with --full when available)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the preset's)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1 on the CPU)")
    p.add_argument("--set", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="override a setting of the preset, e.g. steps=500 (repeatable; see results.md)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def run(args: argparse.Namespace, argv=None, parser=None) -> int:
    import os

    from . import EXPERIMENTS, get
    from .run import ConfigError, run_experiment

    if args.name == "list":
        for n in EXPERIMENTS:
            m = get(n)
            print(f"{n:10s} {m.TITLE}\n{'':10s} claim: {m.CLAIM}")
        return 0
    if args.threads is not None and args.threads < 1:
        msg = "--threads must be >= 1"
        if parser is not None:
            parser.error(msg)
        print(msg, file=sys.stderr)
        return 2
    preset = "full" if args.full else "smoke" if args.smoke else "default"
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m fusedrnn " + " ".join(shlex.quote(a) for a in argv)
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    for n in names:
        out = args.out
        if out is not None and args.name == "all":
            out = os.path.join(out, n + ("" if preset == "default" else f"-{preset}"))
        try:
            run_experiment(get(n), preset, out=out, device=args.device, seeds=args.seeds, threads=args.threads,
                           overrides=dict(args.set), command=command, verbose=not args.quiet)
        except (ConfigError, FileNotFoundError) as e:
            print(f"fusedrnn experiment {n}: error: {e}", file=sys.stderr)
            return 2
    return 0
