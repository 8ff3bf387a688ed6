"""Command line: ``python -m fusedrnn bench ...``, ``python -m fusedrnn train ...``,
``python -m fusedrnn experiment ...`` and ``python -m fusedrnn evidence record|show ...``
(also the console script ``fusedrnn``).

Each subcommand's parser and entry point live with it (fusedrnn.bench.cli,
fusedrnn.train.cli, fusedrnn.experiments.cli, fusedrnn.ops.evidence); this module only
dispatches.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["evidence"]:
        from .ops import evidence

        return evidence.main(args[1:])
    from .bench import cli as bench_cli
    from .experiments import cli as experiment_cli
    from .train import cli as train_cli

    parser = argparse.ArgumentParser(prog="fusedrnn", description="fusedrnn command line")
    sub = parser.add_subparsers(dest="command", required=True)
    bench_cli.add_parser(sub)
    train_cli.add_parser(sub)
    experiment_cli.add_parser(sub)
    sub.add_parser("evidence", help="record or show the GPU validations auto follows (record|show --help)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench_cli.run(args, parser)
    if args.command == "train":
        return train_cli.run(args, parser)
    return experiment_cli.run(args, argv, parser)


if __name__ == "__main__":
    sys.exit(main())
