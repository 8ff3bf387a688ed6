"""Experiments that reproduce the claims fusedrnn is built around, with plots.

    python -m fusedrnn experiment NAME [--full | --smoke] [--out DIR] [--seeds 0 1 2] [--device ...]

==============  ===========================================================================
name            claim
==============  ===========================================================================
dropout         naive per-step recurrent dropout hurts, non-recurrent dropout helps,
                shared (variational) masks help most; mask survival over 10 / 100 steps
batchnorm       recurrent batch norm speeds up training (sequential digits, row by row and
                pixel by pixel; gamma 0.1 vs 1.0)
gradients       the LSTM keeps d loss / d h_t alive over long spans where a tanh RNN loses it
attention       attention learns alignments (date normalization), and accuracy with and
                without attention as the input grows
ntm             the NTM learns to copy, generalizes to longer sequences, and its read /
                write weightings show the memory access
==============  ===========================================================================

The default sizes run in a few minutes each on a 2-core CPU; ``--full`` selects the larger
runs meant for a GPU; ``--smoke`` runs a few steps (for the tests).  Every run writes its
figures (PNG), tables (CSV, and Markdown in results.md) and run.json (the exact command,
device, versions, duration, seeds) to ``docs/figures/NAME`` (``NAME-full``, ``NAME-smoke``)
unless ``--out`` says otherwise.  docs/EXPERIMENTS.md presents the committed results.
"""

from __future__ import annotations

import importlib

from .run import run_experiment

# name -> (module, one-line description); the modules are imported only when run
EXPERIMENTS = {
    "dropout": ("dropout", "dropout schemes on a char-level language model; mask survival"),
    "batchnorm": ("batchnorm", "BN-LSTM vs LSTM on sequential digits (rows, pixels), gamma 0.1 vs 1.0"),
    "gradients": ("gradients", "norm of d loss / d h_t over t: tanh RNN vs LSTM on a long dependency"),
    "attention": ("attention", "seq2seq date normalizer: alignments, accuracy vs input length"),
    "ntm": ("ntm_copy", "NTM on copy: learning curve, longer sequences, read/write weightings"),
}


def get(name: str):
    """The module of experiment ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {list(EXPERIMENTS)}")
    return importlib.import_module(f".{EXPERIMENTS[name][0]}", __name__)


def run(name: str, preset: str = "default", **kwargs) -> dict:
    """Run experiment ``name`` with ``preset`` ("default", "smoke" or "full"); see run_experiment."""
    return run_experiment(get(name), preset, **kwargs)


__all__ = ["EXPERIMENTS", "get", "run", "run_experiment"]
