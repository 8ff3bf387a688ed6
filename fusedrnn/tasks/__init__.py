"""Tasks: data generators (and shipped data) for the reference models.

Each task generates its data from a seed, or uses data that ships in a package, and knows
nothing of models; ``fusedrnn.train`` wires a task to a default model.  Every training
batch is a pure function of (seed, step), see :mod:`fusedrnn.tasks.base`.

    ==================== ============================ ============
    name                 class                        kind
    ==================== ============================ ============
    copy                 CopyTask                     bits
    repeat-copy          RepeatCopyTask               bits
    associative-recall   AssociativeRecallTask        bits
    anbn                 AnBnTask                     next
    anbncn               AnBnCnTask                   next
    dates                DatesTask                    seq2seq
    digit-captions       DigitCaptionsTask            caption
    seq-digits           SeqDigitsTask                classify
    char-lm              TextLMTask                   next
    ==================== ============================ ============

    task = fusedrnn.tasks.make("copy", max_len=5, seed=0)
    batch = task.train_batch(step=0, batch_size=32)     # {"x": [32, T, 9], "y": ..., "mask": ...}
"""

from __future__ import annotations

from .algorithmic import AssociativeRecallTask, CopyTask, RepeatCopyTask
from .base import Task, Vocab, aggregate, shard_batch, slice_batch, to_device
from .dates import DatesTask
from .digits import DigitCaptionsTask, SeqDigitsTask
from .formal import AnBnCnTask, AnBnTask
from .text import TextLMTask

TASKS = {
    "copy": CopyTask,
    "repeat-copy": RepeatCopyTask,
    "associative-recall": AssociativeRecallTask,
    "anbn": AnBnTask,
    "anbncn": AnBnCnTask,
    "dates": DatesTask,
    "digit-captions": DigitCaptionsTask,
    "seq-digits": SeqDigitsTask,
    "char-lm": TextLMTask,
}


def make(name: str, **kwargs) -> Task:
    """Build the task called ``name`` (see TASKS) with its keyword arguments."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name](**kwargs)


__all__ = ["TASKS", "make", "Task", "Vocab", "aggregate", "shard_batch", "slice_batch", "to_device",
           "CopyTask", "RepeatCopyTask", "AssociativeRecallTask", "AnBnTask", "AnBnCnTask", "DatesTask",
           "DigitCaptionsTask", "SeqDigitsTask", "TextLMTask"]
