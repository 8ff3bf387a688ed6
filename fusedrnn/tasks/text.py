"""Language modelling on a text file (``kind = "next"``), character or word level.

By default the text is Tiny Shakespeare, vendored whole
(``fusedrnn/tasks/data/tinyshakespeare.txt``, 1,115,394 characters, public domain, see its
README); ``path=`` uses any UTF-8 text file instead (e.g. WikiText-2).  The last ``valid_fraction`` of the text is the validation split.

Character level: the vocabulary is every character of the file.  Word level: tokens are
whitespace-separated words plus "<eos>" at each line end; words seen fewer than
``min_count`` times become "<unk>".
"""

from __future__ import annotations

import collections
import os
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .base import Batch, Task, Vocab

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
DEFAULT_TEXT = os.path.join(DATA_DIR, "tinyshakespeare.txt")


def tokenize(text: str, level: str) -> list[str]:
    if level == "char":
        return list(text)
    out = []
    for line in text.splitlines():
        words = line.split()
        if words:
            out += words + ["<eos>"]
    return out


class TextLMTask(Task):
    """Next-token prediction on windows of a text.

    Batches: x [B, T] long, y [B, T] long (x shifted by one), mask [B, T] bool (all True).
    Training windows start at random offsets of the training split; evaluation uses
    consecutive windows of the validation split (at most ``eval_size`` of them).
    """

    name = "char-lm"
    kind = "next"
    default_batch_size = 32

    def __init__(self, path: Optional[str] = None, level: str = "char", seq_len: int = 100,
                 valid_fraction: float = 0.1, min_count: int = 1, seed: int = 0, eval_size: int = 64):
        super().__init__(seed, eval_size)
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        if not 0 < valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
        self.path = path or DEFAULT_TEXT
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"char-lm: text file not found: {self.path}")
        self.level, self.seq_len, self.valid_fraction = level, int(seq_len), float(valid_fraction)
        self.min_count = int(min_count)
        with open(self.path, encoding="utf-8") as f:
            tokens = tokenize(f.read(), level)
        if level == "char":
            self.vocab = Vocab(sorted(set(tokens)), specials=False)
        else:
            counts = collections.Counter(tokens)
            self.vocab = Vocab(sorted(w for w, c in counts.items() if c >= self.min_count and w != "<unk>"))
        ids = torch.tensor(self.vocab.encode(tokens), dtype=torch.long)
        n_valid = int(len(ids) * self.valid_fraction)
        self.train_ids, self.valid_ids = ids[:len(ids) - n_valid], ids[len(ids) - n_valid:]
        if len(self.train_ids) <= self.seq_len + 1 or len(self.valid_ids) <= self.seq_len + 1:
            raise ValueError(f"char-lm: the text is too short for seq_len={self.seq_len}")
        self.vocab_size = len(self.vocab)

    def config(self) -> dict:
        return dict(super().config(), path=self.path, level=self.level, seq_len=self.seq_len,
                    valid_fraction=self.valid_fraction, min_count=self.min_count)

    def _windows(self, ids: Tensor, starts) -> Batch:
        idx = torch.as_tensor(np.asarray(starts), dtype=torch.long).unsqueeze(1) + torch.arange(self.seq_len + 1)
        w = ids[idx]
        return {"x": w[:, :-1], "y": w[:, 1:], "mask": torch.ones(len(w), self.seq_len, dtype=torch.bool)}

    def make_batch(self, rng: np.random.Generator, batch_size: int, train: bool) -> Batch:
        ids = self.train_ids if train else self.valid_ids
        return self._windows(ids, rng.integers(0, len(ids) - self.seq_len - 1, size=batch_size))

    def eval_batches(self, batch_size: int) -> list[Batch]:
        """Consecutive windows of the validation split (at most eval_size)."""
        starts = np.arange(0, len(self.valid_ids) - self.seq_len - 1, self.seq_len)[:self.eval_size]
        return [self._windows(self.valid_ids, starts[i:i + batch_size]) for i in range(0, len(starts), batch_size)]

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(tokenize(text, self.level))

    def decode(self, ids) -> str:
        return self.vocab.decode(ids, sep="" if self.level == "char" else " ", stop_at_eos=False)

    def score(self, pred: Tensor, batch: Batch) -> dict:
        """pred [B, T] predicted next tokens -> accuracy."""
        m = batch["mask"].to(pred.device)
        return {"accuracy": (((pred == batch["y"].to(pred.device)) & m).sum().item(), m.sum().item())}

    def describe(self, batch: Batch, i: int, pred=None) -> str:
        s = repr(self.decode(batch["x"][i]))
        if pred is not None:
            s += f"\n  predicted next: {self.decode(pred[i])!r}"
        return s
