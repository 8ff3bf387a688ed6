"""Command line: ``python -m fusedrnn bench ...``, ``python -m fusedrnn train ...`` and
``python -m fusedrnn experiment ...`` (also the console script ``fusedrnn``).

Each subcommand's parser and entry point live with it (fusedrnn.bench.cli,
fusedrnn.train.cli, fusedrnn.experiments.cli); this module only dispatches.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from .bench import cli as bench_cli
    from .experiments import cli as experiment_cli
    from .train import cli as train_cli

    parser = argparse.ArgumentParser(prog="fusedrnn", description="fusedrnn command line")
    sub = parser.add_subparsers(dest="command", required=True)
    bench_cli.add_parser(sub)
    train_cli.add_parser(sub)
    experiment_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench_cli.run(args, parser)
    if args.command == "train":
        return train_cli.run(args, parser)
    return experiment_cli.run(args, argv, parser)


if __name__ == "__main__":
    sys.exit(main())
