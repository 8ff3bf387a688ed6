"""``python -m fusedrnn train TASK ...``: the argument parser and its entry point."""

from __future__ import annotations

import argparse
import ast
import sys

EPILOG = """\
tasks and their models (the first is the default):
{models}

learning targets (experiment runs, not CI; --device cuda or cpu; metrics in DIR/metrics.csv):
  NTM copy, lengths 1-20: < 0.1 bit errors per sequence (bit_errors), then length 40:
    python -m fusedrnn train copy --steps 50000 --eval-every 2500 --out runs/ntm-copy
    python -m fusedrnn train copy --eval-only --out runs/ntm-copy \\
        --task-arg eval_min_len=40 --task-arg eval_max_len=40           # -> runs/ntm-copy/eval.json
  seq2seq + attention date normalization, >= 99% exact match (exact_match, beam_exact_match):
    python -m fusedrnn train dates --model bahdanau --steps 3000 --beam-size 5 --out runs/dates
  StackRNN on a^n b^n, trained on n <= 20, correct up to n = 60 (correct_up_to):
    python -m fusedrnn train anbn --steps 20000 --model-arg hard_eval=True \\
        --task-arg eval_n_max=60 --out runs/anbn

data parallel: torchrun --standalone --nproc_per_node 2 -m fusedrnn train copy --steps 1000 --out runs/ddp
(--batch-size is the global batch; gloo on CPU, NCCL on CUDA).
"""


def _kv(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        v = ast.literal_eval(v)
    except (ValueError, SyntaxError):
        pass
    return k.strip().replace("-", "_"), v


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to an argparse subparsers object."""
    from .registry import TASK_SPECS

    models = "\n".join(f"  {t:20s} {', '.join(s.models)}" for t, s in TASK_SPECS.items())
    p = sub.add_parser("train", help="train a reference model on a task",
                       description="Train a reference model (fusedrnn.models) on a task (fusedrnn.tasks).",
                       epilog=EPILOG.format(models=models), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=list(TASK_SPECS), help="the task")
    p.add_argument("--model", help="model name (default: the task's default; see below)")
    p.add_argument("--backend", default="auto", help="fusedrnn backend of every LSTM / LSTMCell (default auto)")
    p.add_argument("--steps", type=int, help="total optimizer steps (default: the task's)")
    p.add_argument("--batch-size", type=int, help="global batch size (default: the task's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--out", help="run directory: checkpoint.pt, metrics.csv/json, samples.txt, PNG figures")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where its checkpoint left it")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the initialization and dropout")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the task's)")
    p.add_argument("--clip", type=float, help="gradient-norm clipping (0: none; default: the task's)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default steps / 10)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: --eval-every)")
    p.add_argument("--hidden-size", type=int, help="hidden size of the model (NTM: controller size)")
    p.add_argument("--dropout", type=float, help="dropout (models that have it)")
    p.add_argument("--recurrent-dropout", type=float, help="recurrent dropout on h_{t-1}")
    p.add_argument("--variational", action=argparse.BooleanOptionalAction, default=None,
                   help="shared (variational) dropout masks")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None, help="recurrent batch norm")
    p.add_argument("--zoneout", type=float, help="zoneout rate of the recurrent state")
    p.add_argument("--layer-norm", action=argparse.BooleanOptionalAction, default=None, help="layer norm (LN-LSTM / LN-GRU)")
    p.add_argument("--weight-dropout", type=float, help="DropConnect rate on the recurrent weight W_hh")
    p.add_argument("--cell", choices=["lstm", "gru"],
                   help="the recurrent cell of the language model, tagger, classifier and seq2seq (default lstm)")
    p.add_argument("--model-arg", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="any model constructor argument, e.g. memory_size=64 (repeatable)")
    p.add_argument("--task-arg", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="any task argument, e.g. max_len=5 or path=my_corpus.txt (repeatable)")
    p.add_argument("--beam-size", type=int, default=0, help="seq2seq: also score beam search of this size")
    p.add_argument("--samples", type=int, default=3, help="sample outputs printed at each evaluation")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG figures")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the checkpoint in --out (with --task-arg overrides, e.g. eval_max_len=40); "
                        "writes --out/eval.json")
    p.add_argument("--grad-dump", metavar="FILE", help="save the first step's gradients to FILE (a DDP check)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def config_from_args(args: argparse.Namespace):
    from .trainer import TrainConfig

    model_args = dict(args.model_arg)
    for name in ("hidden_size", "dropout", "recurrent_dropout", "variational", "batch_norm", "zoneout", "layer_norm",
                 "weight_dropout", "cell"):
        v = getattr(args, name)
        if v is not None:
            model_args[name] = v
    return TrainConfig(task=args.task, model=args.model, backend=args.backend, steps=args.steps,
                       batch_size=args.batch_size, device=args.device, dtype=args.dtype, out=args.out,
                       resume=args.resume, seed=args.seed, lr=args.lr, clip=args.clip, eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, task_args=dict(args.task_arg), model_args=model_args,
                       beam_size=args.beam_size, num_samples=args.samples, plots=not args.no_plots,
                       progress=args.progress, threads=args.threads, grad_dump=args.grad_dump,
                       verbose=not args.quiet)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from .trainer import train

    for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            msg = f"--{name.replace('_', '-')} must be >= 1"
            if parser is not None:
                parser.error(msg)
            print(msg, file=sys.stderr)
            return 2
    try:
        if args.eval_only:
            if not args.out:
                raise ValueError("--eval-only needs --out (the run directory)")
            from .trainer import evaluate_checkpoint

            evaluate_checkpoint(args.out, dict(args.task_arg), args.device, beam_size=args.beam_size or None,
                                verbose=not args.quiet)
            return 0
        train(config_from_args(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"fusedrnn train: error: {e}", file=sys.stderr)
        return 2
    return 0
