"""How a model is trained and scored on each task ``kind`` (see :mod:`fusedrnn.tasks.base`).

An objective turns a batch into a summed loss (:meth:`Objective.loss`) with the batch's
normalizer (:meth:`Objective.count`): the trainer divides by the normalizer of the *global*
batch, so data-parallel workers holding shards compute the same gradient as one process
holding the whole batch.  :meth:`Objective.evaluate` scores the model on the evaluation set,
:meth:`Objective.samples` renders a few predictions, :meth:`Objective.plot` draws a figure
(attention for seq2seq, memory access for the NTM).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import models
from ..tasks import Task, aggregate, to_device


def _first(out):
    return out[0] if isinstance(out, tuple) else out


class Objective:
    """Base class; ``one_hot`` one-hot encodes token inputs for feature-input models."""

    def __init__(self, task: Task, one_hot: bool = False):
        self.task, self.one_hot = task, one_hot

    def count(self, batch) -> float:
        return float(batch["mask"].sum())

    def loss(self, model: nn.Module, batch) -> Tensor:
        raise NotImplementedError

    def predict(self, model: nn.Module, batch):
        """-> (predictions for task.score, extras dict)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches, device, dtype) -> dict:
        model.eval()
        scores, loss_sum, n = [], 0.0, 0.0
        for b in batches:
            b = to_device(b, device, dtype)
            loss_sum += float(self.loss(model, b))
            n += self.count(b)
            pred, _ = self.predict(model, b)
            scores.append(self.task.score(pred, b))
        out = {"eval_loss": loss_sum / max(n, 1)}
        out.update(aggregate(scores))
        return out

    @torch.no_grad()
    def samples(self, model: nn.Module, batch, device, dtype, n: int = 3) -> list[str]:
        model.eval()
        b = to_device(batch, device, dtype)
        pred, _ = self.predict(model, b)
        pred = pred.cpu() if isinstance(pred, Tensor) else pred
        return [self.task.describe(batch, i, pred) for i in range(min(n, pred.shape[0]))]

    def plot(self, model: nn.Module, batch, device, dtype, path: str) -> Optional[str]:
        return None


class BitsObjective(Objective):
    """kind "bits": model(x [B, T, I]) -> logits [B, T, O]; binary cross-entropy per scored bit."""

    def count(self, batch) -> float:
        return float(batch["mask"].sum()) * batch["y"].shape[-1]

    def loss(self, model, batch) -> Tensor:
        logits = _first(model(batch["x"]))
        bce = F.binary_cross_entropy_with_logits(logits, batch["y"], reduction="none")
        return (bce * batch["mask"].unsqueeze(-1)).sum()

    def predict(self, model, batch):
        return torch.sigmoid(_first(model(batch["x"]))), {}

    @torch.no_grad()
    def plot(self, model, batch, device, dtype, path):
        if not isinstance(model, models.NTM):
            return None
        from .plots import memory_access_png
        model.eval()
        b = to_device({k: v[:1] for k, v in batch.items()}, device, dtype)
        logits, trace = model(b["x"], return_trace=True)
        m = b["mask"][0].cpu()
        T = int(m.nonzero().max()) + 1 if m.any() else m.shape[0]
        memory_access_png(path, b["x"][0, :T].cpu(), b["y"][0, :T].cpu(), torch.sigmoid(logits[0, :T]).cpu(),
                          m[:T], trace["read_weights"][0, :T].cpu(), trace["write_weights"][0, :T].cpu())
        return path


class NextObjective(Objective):
    """kind "next": next-token prediction, cross-entropy per scored token.

    LanguageModel takes tokens; feature-input models (StackRNN) get one-hot tokens."""

    def _logits(self, model, x):
        if self.one_hot:
            return _first(model(F.one_hot(x, self.task.vocab_size).to(self._dtype(model))))
        return _first(model(x))

    @staticmethod
    def _dtype(model):
        return next(model.parameters()).dtype

    def loss(self, model, batch) -> Tensor:
        logits = self._logits(model, batch["x"])
        ce = F.cross_entropy(logits.flatten(0, 1), batch["y"].flatten(), reduction="none")
        return (ce * batch["mask"].flatten()).sum()

    def predict(self, model, batch):
        return self._logits(model, batch["x"]).argmax(-1), {}

    @torch.no_grad()
    def evaluate(self, model, batches, device, dtype) -> dict:
        out = super().evaluate(model, batches, device, dtype)
        if getattr(self.task, "level", None) == "char":
            out["bpc"] = out["eval_loss"] / math.log(2)
        elif getattr(self.task, "level", None) == "word":
            out["ppl"] = math.exp(min(out["eval_loss"], 50))
        return out

    @torch.no_grad()
    def samples(self, model, batch, device, dtype, n: int = 3) -> list[str]:
        base = model.module if hasattr(model, "module") else model
        if isinstance(base, models.LanguageModel) and hasattr(self.task, "decode"):
            gen = torch.Generator(device=device).manual_seed(1234)
            prompt = torch.tensor(self.task.encode("\n")).to(device).unsqueeze(0).repeat(n, 1)
            out = base.sample(prompt, 200, temperature=0.8, generator=gen)
            return [repr(self.task.decode(row.cpu())) for row in out]
        if "n" in batch:  # counting languages: the largest sizes are the interesting ones
            idx = torch.arange(batch["n"].shape[0] - 1, -1, -max(1, batch["n"].shape[0] // n))[:n]
            batch = {k: v[idx] for k, v in batch.items()}
        return super().samples(model, batch, device, dtype, n)


class Seq2SeqObjective(Objective):
    """kind "seq2seq": teacher-forced cross-entropy; greedy decoding for the scores."""

    def __init__(self, task, one_hot=False, beam_size: int = 0):
        super().__init__(task, one_hot)
        self.beam_size = beam_size

    def loss(self, model, batch) -> Tensor:
        logits, _ = model(batch["src"], batch["src_len"], batch["tgt_in"])
        ce = F.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(), reduction="none")
        return (ce * batch["mask"].flatten()).sum()

    def predict(self, model, batch):
        base = model.module if hasattr(model, "module") else model
        max_len = batch["tgt_out"].shape[1] + 5
        tokens, attn = base.greedy(batch["src"], batch["src_len"], max_len=max_len)
        return tokens, {"attention": attn}

    @torch.no_grad()
    def evaluate(self, model, batches, device, dtype) -> dict:
        out = super().evaluate(model, batches, device, dtype)
        if self.beam_size > 0:
            base = model.module if hasattr(model, "module") else model
            scores = []
            for b in batches:
                b = to_device(b, device, dtype)
                tokens, _ = base.beam_search(b["src"], b["src_len"], self.beam_size, b["tgt_out"].shape[1] + 5)
                scores.append(self.task.score(tokens, b))
            out.update({f"beam_{k}": v for k, v in aggregate(scores).items()})
        return out

    @torch.no_grad()
    def plot(self, model, batch, device, dtype, path):
        from .plots import attention_png
        model.eval()
        k = min(4, batch["src"].shape[0])
        b = to_device({key: v[:k] for key, v in batch.items()}, device, dtype)
        tokens, extra = self.predict(model, b)
        if extra["attention"] is None:
            return None
        items = []
        for i in range(k):
            src = list(self.task.source_text(batch, i)) + ["</s>"]
            out = self.task.tgt_vocab.decode(tokens[i].cpu())
            L = len(out) + 1
            items.append((src, list(out) + ["</s>"], extra["attention"][i, :L, :len(src)].float().cpu()))
        attention_png(path, items)
        return path


class CaptionObjective(Objective):
    """kind "caption": teacher-forced cross-entropy; greedy decoding for the scores."""

    def loss(self, model, batch) -> Tensor:
        logits = model(batch["features"], batch["tgt_in"])
        ce = F.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(), reduction="none")
        return (ce * batch["mask"].flatten()).sum()

    def predict(self, model, batch):
        base = model.module if hasattr(model, "module") else model
        return base.greedy(batch["features"], max_len=batch["tgt_out"].shape[1] + 3), {}


class ClassifyObjective(Objective):
    """kind "classify": model(x [B, T, I]) -> logits [B, C]; cross-entropy per example."""

    def count(self, batch) -> float:
        return float(batch["y"].shape[0])

    def loss(self, model, batch) -> Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="sum")

    def predict(self, model, batch):
        return model(batch["x"]).argmax(-1), {}


OBJECTIVES = {"bits": BitsObjective, "next": NextObjective, "seq2seq": Seq2SeqObjective,
              "caption": CaptionObjective, "classify": ClassifyObjective}


def make_objective(task: Task, one_hot: bool = False, **kwargs) -> Objective:
    return OBJECTIVES[task.kind](task, one_hot=one_hot, **kwargs)
