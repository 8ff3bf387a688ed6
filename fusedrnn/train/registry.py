"""Which models can train on which task, with the defaults of each (the wiring between
:mod:`fusedrnn.tasks` and :mod:`fusedrnn.models`; neither of those knows the other).

Every task has a default model and training settings small enough for a CPU; larger models
are one ``--model-arg`` / ``--hidden-size`` away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .. import models
from ..tasks import Task


@dataclass
class ModelSpec:
    """A model for a task: ``build(task, **kwargs)``, its default kwargs, and whether token
    inputs must be one-hot encoded for it (models that take features)."""

    build: Callable[..., nn.Module]
    defaults: dict = field(default_factory=dict)
    one_hot: bool = False
    # generic option name -> this model's constructor argument (e.g. hidden_size -> controller_size)
    aliases: dict = field(default_factory=dict)


@dataclass
class TaskSpec:
    """Training defaults of a task and the models that can train on it (the first is the default)."""

    models: dict
    steps: int
    batch_size: int
    lr: float
    clip: float = 10.0
    eval_every: int = 0          # 0: steps // 10

    @property
    def default_model(self) -> str:
        return next(iter(self.models))


def _ntm(task: Task, **kw) -> nn.Module:
    return models.NTM(task.input_size, task.output_size, **kw)


def _bits_lstm(task: Task, **kw) -> nn.Module:
    return models.SequenceTagger(task.output_size, input_size=task.input_size, bidirectional=False, **kw)


def _stack(task: Task, **kw) -> nn.Module:
    return models.StackRNN(task.vocab_size, task.vocab_size, **kw)


def _lm(task: Task, **kw) -> nn.Module:
    return models.LanguageModel(task.vocab_size, **kw)


def _seq2seq(attention: str):
    def build(task: Task, **kw) -> nn.Module:
        return models.Seq2Seq(len(task.src_vocab), len(task.tgt_vocab), attention=attention, **kw)
    return build


def _caption(task: Task, **kw) -> nn.Module:
    return models.CaptionDecoder(task.feature_size, len(task.vocab), **kw)


def _classifier(task: Task, **kw) -> nn.Module:
    return models.SequenceClassifier(task.num_classes, input_size=task.input_size, **kw)


_NTM = ModelSpec(_ntm, dict(controller_size=100, memory_size=128, memory_width=20), aliases={"hidden_size": "controller_size"})
_BITS_LSTM = ModelSpec(_bits_lstm, dict(hidden_size=256))
_SEQ2SEQ = dict(embed_size=32, hidden_size=64)

TASK_SPECS: dict[str, TaskSpec] = {
    "copy": TaskSpec({"ntm": _NTM, "lstm": _BITS_LSTM}, steps=10000, batch_size=32, lr=1e-3),
    "repeat-copy": TaskSpec({"ntm": _NTM, "lstm": _BITS_LSTM}, steps=20000, batch_size=32, lr=1e-3),
    "associative-recall": TaskSpec({"ntm": _NTM, "lstm": _BITS_LSTM}, steps=20000, batch_size=32, lr=1e-3),
    "anbn": TaskSpec({"stack": ModelSpec(_stack, dict(hidden_size=32, num_stacks=2), one_hot=True),
                      "lstm": ModelSpec(_lm, dict(embed_size=8, hidden_size=32, num_layers=1))},
                     steps=3000, batch_size=32, lr=3e-3, clip=5.0),
    "anbncn": TaskSpec({"stack": ModelSpec(_stack, dict(hidden_size=32, num_stacks=2), one_hot=True),
                        "lstm": ModelSpec(_lm, dict(embed_size=8, hidden_size=32, num_layers=1))},
                       steps=5000, batch_size=32, lr=3e-3, clip=5.0),
    "dates": TaskSpec({"bahdanau": ModelSpec(_seq2seq("bahdanau"), _SEQ2SEQ),
                       "luong-general": ModelSpec(_seq2seq("luong-general"), _SEQ2SEQ),
                       "luong-dot": ModelSpec(_seq2seq("luong-dot"), _SEQ2SEQ),
                       "no-attention": ModelSpec(_seq2seq("none"), _SEQ2SEQ)},
                      steps=3000, batch_size=64, lr=3e-3, clip=5.0),
    "digit-captions": TaskSpec({"caption": ModelSpec(_caption, dict(embed_size=32, hidden_size=128, feed_features=True,
                                                                    feature_hidden=128))},
                               steps=3000, batch_size=64, lr=2e-3, clip=5.0),
    "seq-digits": TaskSpec({"bn-lstm": ModelSpec(_classifier, dict(hidden_size=64, batch_norm=True)),
                            "lstm": ModelSpec(_classifier, dict(hidden_size=64))},
                           steps=2000, batch_size=64, lr=3e-3, clip=5.0),
    "char-lm": TaskSpec({"lm": ModelSpec(_lm, dict(embed_size=64, hidden_size=256, num_layers=2, dropout=0.1,
                                                   recurrent_dropout=0.1, variational=True)),
                         "lm-tied": ModelSpec(_lm, dict(embed_size=128, hidden_size=256, num_layers=2, dropout=0.1,
                                                        recurrent_dropout=0.1, variational=True, tie_weights=True))},
                        steps=2000, batch_size=32, lr=2e-3, clip=5.0),
}


def model_names(task: str) -> list[str]:
    return list(TASK_SPECS[task].models)


def build_model(task_name: str, task: Task, model: str | None = None, **overrides) -> tuple[nn.Module, ModelSpec]:
    """The model ``model`` (default: the task's default) for ``task``, with its default
    arguments updated by ``overrides`` (generic names such as hidden_size are mapped to the
    model's own).  Returns (module, spec)."""
    spec = TASK_SPECS[task_name]
    name = model or spec.default_model
    if name not in spec.models:
        raise ValueError(f"task {task_name!r} has no model {name!r}; expected one of {list(spec.models)}")
    ms = spec.models[name]
    kw = dict(ms.defaults)
    for k, v in overrides.items():
        kw[ms.aliases.get(k, k)] = v
    try:
        return ms.build(task, **kw), ms
    except TypeError as e:
        raise ValueError(f"model {name!r} for task {task_name!r}: {e}") from None
