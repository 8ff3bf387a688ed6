"""Task protocol shared by every task in :mod:`fusedrnn.tasks`.

A task makes batches of data; it does not know any model.  Every batch is a ``dict`` of
tensors whose first dimension is the batch, so a batch can be moved to a device or split
between data-parallel workers by slicing every entry (:func:`slice_batch`).

Determinism: the training batch of step ``s`` is a pure function of ``(seed, s)`` (it is
drawn from a NumPy generator seeded with ``[seed, stream, s]``), so two runs with the same
seed see the same data in the same order, and a resumed run continues the sequence
exactly.  Evaluation batches come from a separate stream and are the same for every step.

``kind`` names the calling convention between a task's batches and a model (the training
code wires the two together):

- ``"bits"``:      x [B, T, I] float, y [B, T, O] float in {0, 1}, mask [B, T] bool
                   (steps whose output is scored);
- ``"next"``:      x [B, T] long, y [B, T] long, mask [B, T] bool (next-token prediction);
- ``"seq2seq"``:   src [B, S] long, src_len [B] long, tgt_in [B, T] long (BOS first),
                   tgt_out [B, T] long (EOS last), mask [B, T] bool;
- ``"caption"``:   features [B, F] float, tgt_in, tgt_out, mask as seq2seq;
- ``"classify"``:  x [B, T, I] float, y [B] long.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
from torch import Tensor

Batch = dict  # str -> Tensor, first dimension the batch

TRAIN_STREAM, EVAL_STREAM = 0, 1

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def rng(seed: int, stream: int, step: int) -> np.random.Generator:
    """The NumPy generator of one (seed, stream, step): independent of torch's generator."""
    return np.random.default_rng([int(seed), int(stream), int(step)])


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of every entry."""
    return {k: v[start:stop] for k, v in batch.items()}


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """The rank-th of ``world_size`` contiguous, equal shards (the batch size must divide)."""
    B = batch_size_of(batch)
    if B % world_size:
        raise ValueError(f"batch size {B} is not divisible by the world size {world_size}")
    n = B // world_size
    return slice_batch(batch, rank * n, (rank + 1) * n)


def batch_size_of(batch: Batch) -> int:
    return next(iter(batch.values())).shape[0]


def to_device(batch: Batch, device, dtype: Optional[torch.dtype] = None) -> Batch:
    """Move every tensor to ``device``; floating tensors are cast to ``dtype`` if given."""
    out = {}
    for k, v in batch.items():
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.to(device)
    return out


def concat_batches(batches: Iterable[Batch]) -> Batch:
    """Concatenate along the batch (padding the time dimension of 2-D/3-D entries)."""
    batches = list(batches)
    out = {}
    for k in batches[0]:
        vs = [b[k] for b in batches]
        if vs[0].dim() >= 2:
            T = max(v.shape[1] for v in vs)
            vs = [torch.nn.functional.pad(v, [0, 0] * (v.dim() - 2) + [0, T - v.shape[1]]) for v in vs]
        out[k] = torch.cat(vs)
    return out


class Vocab:
    """A token <-> id map with the four specials first (pad 0, bos 1, eos 2, unk 3)."""

    def __init__(self, tokens: Iterable[str], specials: bool = True):
        self.itos = (list(SPECIALS) if specials else []) + [t for t in tokens]
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("Vocab: duplicate tokens")
        self.specials = specials

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        unk = self.stoi.get("<unk>")
        out = []
        for t in tokens:
            i = self.stoi.get(t, unk)
            if i is None:
                raise KeyError(f"token {t!r} is not in the vocabulary")
            out.append(i)
        return out

    def decode(self, ids, sep: str = "", stop_at_eos: bool = True) -> str:
        """ids -> text, skipping pad/bos and stopping at eos."""
        out = []
        for i in (ids.tolist() if isinstance(ids, Tensor) else ids):
            if self.specials and stop_at_eos and i == EOS:
                break
            if self.specials and i in (PAD, BOS):
                continue
            out.append(self.itos[i])
        return sep.join(out)


def pad_sequences(seqs: list[list[int]], value: int = PAD, length: Optional[int] = None) -> Tensor:
    """Right-pad lists of ids into a [B, T] long tensor."""
    T = length if length is not None else max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


class Task:
    """Base class: subclasses set ``name``, ``kind`` and implement :meth:`make_batch`.

    Args:
        seed: the data seed (training and evaluation streams derive from it).
        eval_size: number of evaluation examples.
    """

    name = "task"
    kind = ""
    default_batch_size = 32

    def __init__(self, seed: int = 0, eval_size: int = 256):
        self.seed = int(seed)
        self.eval_size = int(eval_size)

    # -- to implement ----------------------------------------------------------------------
    def make_batch(self, rng: np.random.Generator, batch_size: int, train: bool) -> Batch:
        raise NotImplementedError

    # -- provided ---------------------------------------------------------------------------
    def train_batch(self, step: int, batch_size: int) -> Batch:
        """The (global) training batch of ``step``: a pure function of (seed, step)."""
        return self.make_batch(rng(self.seed, TRAIN_STREAM, step), batch_size, True)

    def eval_batches(self, batch_size: int) -> list[Batch]:
        """The fixed evaluation set (``eval_size`` examples) in batches of ``batch_size``."""
        out, n, i = [], self.eval_size, 0
        while n > 0:
            b = min(batch_size, n)
            out.append(self.make_batch(rng(self.seed, EVAL_STREAM, i), b, False))
            n -= b
            i += 1
        return out

    def config(self) -> dict:
        """The constructor arguments (recorded with checkpoints and metrics)."""
        return {"seed": self.seed, "eval_size": self.eval_size}

    def describe(self, batch: Batch, i: int, pred=None) -> str:
        """A human-readable rendering of example i of a batch (and a prediction)."""
        return f"example {i}"


def aggregate(scores: Iterable[dict]) -> dict:
    """Combine per-batch ``{metric: (sum, count)}`` dicts into ``{metric: sum / count}``."""
    tot: dict = {}
    for s in scores:
        for k, (num, den) in s.items():
            a, b = tot.get(k, (0.0, 0))
            tot[k] = (a + float(num), b + den)
    return {k: (num / den if den else float("nan")) for k, (num, den) in tot.items()}
