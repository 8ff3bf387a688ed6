"""The algorithmic tasks of the Neural Turing Machine paper (Graves et al., arXiv 1410.5401):
copy, repeat copy and associative recall.  All are ``kind = "bits"``:

    x [B, T, I] float inputs, y [B, T, O] float target bits, mask [B, T] bool

where ``mask`` marks the steps whose output is scored.  Every example of a batch has its
own length; shorter examples are zero-padded at the end (padding is never scored).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Batch, Task


def _check_range(name: str, lo: int, hi: int, minimum: int = 1) -> None:
    if not (isinstance(lo, int) and isinstance(hi, int)) or lo < minimum or hi < lo:
        raise ValueError(f"{name}: expected integers {minimum} <= min <= max, got ({lo!r}, {hi!r})")


def _grid(rows: np.ndarray) -> str:
    """[T, C] array in {0, 1} -> lines of '#' and '.' (channels down, time across)."""
    return "\n".join("".join("#" if v > 0.5 else "." for v in rows[:, c]) for c in range(rows.shape[1]))


class BitsTask(Task):
    """Common scoring and rendering of the bit tasks."""

    kind = "bits"
    input_size = 0
    output_size = 0

    def score(self, pred: Tensor, batch: Batch) -> dict:
        """pred [B, T, O]: bits in {0, 1} or probabilities (thresholded at 0.5).

        Returns {metric: (sum, count)} (see :func:`~fusedrnn.tasks.base.aggregate`):
        bit_errors (wrong bits per sequence over the scored steps) and seq_acc (fraction of
        sequences without an error).
        """
        y, mask = batch["y"], batch["mask"].to(pred.device)
        wrong = ((pred > 0.5) != (y.to(pred.device) > 0.5)) & mask.unsqueeze(-1)
        per_seq = wrong.sum(dim=(1, 2))
        n = y.shape[0]
        return {"bit_errors": (per_seq.sum().item(), n), "seq_acc": ((per_seq == 0).sum().item(), n)}

    def describe(self, batch: Batch, i: int, pred=None) -> str:
        mask = batch["mask"][i].numpy()
        T = int(np.nonzero(mask)[0].max()) + 1 if mask.any() else batch["x"].shape[1]
        first = int(np.nonzero(mask)[0].min()) if mask.any() else 0
        x = batch["x"][i, :T].numpy()
        y = batch["y"][i, first:T].numpy()
        out = [f"input ({T} steps):", _grid(x), "target:", _grid(y)]
        if pred is not None:
            p = pred[i, first:T].detach().float().cpu().numpy()
            errs = int(((p > 0.5) != (y > 0.5)).sum())
            out += [f"output ({errs} bit errors):", _grid(p)]
        return "\n".join(out)


class CopyTask(BitsTask):
    """Copy: read L random W-bit vectors, then a delimiter, then write them back.

    Input channels: W bits + 1 delimiter (I = W + 1); output O = W.  Steps: L inputs,
    1 delimiter, L answer steps (T = 2L + 1).  L is uniform in [min_len, max_len] for
    training and in [eval_min_len, eval_max_len] for evaluation (default: the training range).
    """

    name = "copy"

    def __init__(self, width: int = 8, min_len: int = 1, max_len: int = 20, eval_min_len=None,
                 eval_max_len=None, seed: int = 0, eval_size: int = 256):
        super().__init__(seed, eval_size)
        _check_range("copy lengths", min_len, max_len)
        self.width, self.min_len, self.max_len = int(width), min_len, max_len
        self.eval_min_len = min_len if eval_min_len is None else int(eval_min_len)
        self.eval_max_len = max_len if eval_max_len is None else int(eval_max_len)
        _check_range("copy eval lengths", self.eval_min_len, self.eval_max_len)
        self.input_size, self.output_size = self.width + 1, self.width

    def config(self) -> dict:
        return dict(super().config(), width=self.width, min_len=self.min_len, max_len=self.max_len,
                    eval_min_len=self.eval_min_len, eval_max_len=self.eval_max_len)

    def make_batch(self, rng: np.random.Generator, batch_size: int, train: bool) -> Batch:
        lo, hi = (self.min_len, self.max_len) if train else (self.eval_min_len, self.eval_max_len)
        lens = rng.integers(lo, hi + 1, size=batch_size)
        T, W = 2 * int(lens.max()) + 1, self.width
        x = np.zeros((batch_size, T, W + 1), np.float32)
        y = np.zeros((batch_size, T, W), np.float32)
        mask = np.zeros((batch_size, T), bool)
        for b, L in enumerate(lens):
            bits = rng.integers(0, 2, size=(L, W)).astype(np.float32)
            x[b, :L, :W] = bits
            x[b, L, W] = 1.0
            y[b, L + 1:2 * L + 1] = bits
            mask[b, L + 1:2 * L + 1] = True
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "mask": torch.from_numpy(mask)}


class RepeatCopyTask(BitsTask):
    """Repeat copy: read L vectors and a repeat count R, write the sequence R times, then an
    end marker.

    Input channels: W bits, a delimiter, the count R / max_repeats (I = W + 2).  Output: W bits
    and an end-marker channel (O = W + 1).  Steps: L inputs, 1 delimiter+count, L * R answer
    steps, 1 end-marker step (T = L (R + 1) + 2); the answer and end-marker steps are scored.
    """

    name = "repeat-copy"

    def __init__(self, width: int = 8, min_len: int = 1, max_len: int = 10, min_repeats: int = 1,
                 max_repeats: int = 10, eval_max_len=None, eval_max_repeats=None, seed: int = 0,
                 eval_size: int = 256):
        super().__init__(seed, eval_size)
        _check_range("repeat-copy lengths", min_len, max_len)
        _check_range("repeat-copy repeats", min_repeats, max_repeats)
        self.width, self.min_len, self.max_len = int(width), min_len, max_len
        self.min_repeats, self.max_repeats = min_repeats, max_repeats
        self.eval_max_len = max_len if eval_max_len is None else int(eval_max_len)
        self.eval_max_repeats = max_repeats if eval_max_repeats is None else int(eval_max_repeats)
        self.input_size, self.output_size = self.width + 2, self.width + 1

    def config(self) -> dict:
        return dict(super().config(), width=self.width, min_len=self.min_len, max_len=self.max_len,
                    min_repeats=self.min_repeats, max_repeats=self.max_repeats,
                    eval_max_len=self.eval_max_len, eval_max_repeats=self.eval_max_repeats)

    def make_batch(self, rng: np.random.Generator, batch_size: int, train: bool) -> Batch:
        hi_l = self.max_len if train else self.eval_max_len
        hi_r = self.max_repeats if train else self.eval_max_repeats
        lens = rng.integers(self.min_len, hi_l + 1, size=batch_size)
        reps = rng.integers(self.min_repeats, hi_r + 1, size=batch_size)
        T = int((lens * (reps + 1)).max()) + 2
        W = self.width
        x = np.zeros((batch_size, T, W + 2), np.float32)
        y = np.zeros((batch_size, T, W + 1), np.float32)
        mask = np.zeros((batch_size, T), bool)
        for b, (L, R) in enumerate(zip(lens, reps)):
            bits = rng.integers(0, 2, size=(L, W)).astype(np.float32)
            x[b, :L, :W] = bits
            x[b, L, W] = 1.0
            x[b, L, W + 1] = R / self.max_repeats
            y[b, L + 1:L + 1 + L * R, :W] = np.tile(bits, (R, 1))
            y[b, L + 1 + L * R, W] = 1.0
            mask[b, L + 1:L + 2 + L * R] = True
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "mask": torch.from_numpy(mask)}


class AssociativeRecallTask(BitsTask):
    """Associative recall: a list of items (each ``item_len`` W-bit vectors, each preceded by
    an item delimiter), then a query item between two query delimiters; answer: the item
    that followed the query in the list.

    Input channels: W bits, item delimiter, query delimiter (I = W + 2); output O = W.
    Steps: n (item_len + 1) + item_len + 2 + item_len answer steps (scored).
    """

    name = "associative-recall"

    def __init__(self, width: int = 6, item_len: int = 3, min_items: int = 2, max_items: int = 6,
                 eval_max_items=None, seed: int = 0, eval_size: int = 256):
        super().__init__(seed, eval_size)
        _check_range("associative-recall items", min_items, max_items, minimum=2)
        self.width, self.item_len = int(width), int(item_len)
        self.min_items, self.max_items = min_items, max_items
        self.eval_max_items = max_items if eval_max_items is None else int(eval_max_items)
        self.input_size, self.output_size = self.width + 2, self.width

    def config(self) -> dict:
        return dict(super().config(), width=self.width, item_len=self.item_len, min_items=self.min_items,
                    max_items=self.max_items, eval_max_items=self.eval_max_items)

    def make_batch(self, rng: np.random.Generator, batch_size: int, train: bool) -> Batch:
        hi = self.max_items if train else self.eval_max_items
        ns = rng.integers(self.min_items, hi + 1, size=batch_size)
        k, W = self.item_len, self.width
        T = int(ns.max()) * (k + 1) + 2 * k + 2
        x = np.zeros((batch_size, T, W + 2), np.float32)
        y = np.zeros((batch_size, T, W), np.float32)
        mask = np.zeros((batch_size, T), bool)
        for b, n in enumerate(ns):
            items = rng.integers(0, 2, size=(n, k, W)).astype(np.float32)
            q = int(rng.integers(0, n - 1))
            t = 0
            for j in range(n):
                x[b, t, W] = 1.0
                x[b, t + 1:t + 1 + k, :W] = items[j]
                t += k + 1
            x[b, t, W + 1] = 1.0
            x[b, t + 1:t + 1 + k, :W] = items[q]
            x[b, t + 1 + k, W + 1] = 1.0
            t += k + 2
            y[b, t:t + k] = items[q + 1]
            mask[b, t:t + k] = True
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "mask": torch.from_numpy(mask)}
