"""Counting languages of the stack-augmented RNN paper (Joulin & Mikolov, arXiv 1503.01007):
aⁿbⁿ and aⁿbⁿcⁿ as next-symbol prediction (``kind = "next"``).

Alphabet: 0 pad, 1 "$" (sequence boundary), 2 "a", 3 "b", 4 "c".  One example of size n:

    x = $ a…a b…b (c…c)        y = a…a b…b (c…c) $        (x shifted by one)

The a's are unpredictable (n is random) but once the first b is read every following
symbol is determined; ``det`` [B, T] marks those positions (where x is b or c).  A sequence
is correct when every deterministic symbol is predicted.  Evaluation covers every
n in [1, eval_n_max] once (the string of each n is unique), so ``correct_up_to`` is the
largest N such that every n <= N is correct.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Batch, Task

PAD, BOUNDARY, A, B_, C = 0, 1, 2, 3, 4
SYMBOLS = ("<pad>", "$", "a", "b", "c")


class CountingTask(Task):
    """aⁿbⁿ (``letters=2``) or aⁿbⁿcⁿ (``letters=3``) with n uniform in [n_min, n_max] for
    training; evaluation on every n in [1, eval_n_max] (default n_max).

    Batches: x [B, T] long, y [B, T] long, mask [B, T] bool (not padding),
    det [B, T] bool (deterministic positions), n [B] long.
    """

    kind = "next"
    vocab_size = len(SYMBOLS)

    def __init__(self, letters: int = 2, n_min: int = 1, n_max: int = 20, eval_n_max=None,
                 seed: int = 0, eval_size: int = 0):
        super().__init__(seed, eval_size)
        if letters not in (2, 3):
            raise ValueError(f"letters must be 2 or 3, got {letters!r}")
        if not (isinstance(n_min, int) and isinstance(n_max, int)) or not 1 <= n_min <= n_max:
            raise ValueError(f"expected integers 1 <= n_min <= n_max, got ({n_min!r}, {n_max!r})")
        self.letters, self.n_min, self.n_max = letters, n_min, n_max
        self.eval_n_max = n_max if eval_n_max is None else int(eval_n_max)
        self.name = "anbn" if letters == 2 else "anbncn"

    def config(self) -> dict:
        return dict(seed=self.seed, n_min=self.n_min, n_max=self.n_max,
                    eval_n_max=self.eval_n_max)

    def sequences(self, ns) -> Batch:
        """The batch of the given sizes n."""
        ns = [int(n) for n in ns]
        k = self.letters
        T = k * max(ns) + 1
        x = torch.zeros(len(ns), T, dtype=torch.long)
        y = torch.zeros(len(ns), T, dtype=torch.long)
        for i, n in enumerate(ns):
            s = [BOUNDARY] + [A] * n + [B_] * n + ([C] * n if k == 3 else []) + [BOUNDARY]
            s = torch.tensor(s)
            x[i, :len(s) - 1] = s[:-1]
            y[i, :len(s) - 1] = s[1:]
        mask = x != PAD
        det = (x == B_) | (x == C)
        return {"x": x, "y": y, "mask": mask, "det": det, "n": torch.tensor(ns, dtype=torch.long)}

    def make_batch(self, rng: np.random.Generator, batch_size: int, train: bool) -> Batch:
        return self.sequences(rng.integers(self.n_min, self.n_max + 1, size=batch_size))

    def eval_batches(self, batch_size: int) -> list[Batch]:
        """One batch with every n in [1, eval_n_max] (batch_size is ignored)."""
        return [self.sequences(range(1, self.eval_n_max + 1))]

    def score(self, pred: Tensor, batch: Batch) -> dict:
        """pred [B, T] predicted next symbols -> {metric: (sum, count)}: det_acc (symbol
        accuracy on deterministic positions), seq_acc, and correct_up_to (over this batch)."""
        y, det = batch["y"].to(pred.device), batch["det"].to(pred.device)
        ok = (pred == y) | ~det
        seq_ok = ok.all(1).cpu()
        n = batch["n"].cpu()
        bad = n[~seq_ok]
        upto = (int(bad.min()) - 1) if bad.numel() else int(n.max())
        return {"det_acc": (((pred == y) & det).sum().item(), det.sum().item()),
                "seq_acc": (seq_ok.sum().item(), len(seq_ok)),
                "correct_up_to": (upto, 1)}

    def describe(self, batch: Batch, i: int, pred=None) -> str:
        m = batch["mask"][i]
        x = "".join(SYMBOLS[t] for t in batch["x"][i][m].tolist())
        out = f"n={int(batch['n'][i])} input  {x}\n      target {''.join(SYMBOLS[t] for t in batch['y'][i][m].tolist())}"
        if pred is not None:
            p = pred[i].cpu()[m]
            marks = "".join("^" if (d and a != b) else " " for a, b, d in
                            zip(p.tolist(), batch["y"][i][m].tolist(), batch["det"][i][m].tolist()))
            out += f"\n      output {''.join(SYMBOLS[t] for t in p.tolist())}\n             {marks}"
        return out


class AnBnTask(CountingTask):
    """aⁿbⁿ; see :class:`CountingTask`."""

    name = "anbn"

    def __init__(self, n_min: int = 1, n_max: int = 20, eval_n_max=None, seed: int = 0):
        super().__init__(2, n_min, n_max, eval_n_max, seed)


class AnBnCnTask(CountingTask):
    """aⁿbⁿcⁿ; see :class:`CountingTask`."""

    name = "anbncn"

    def __init__(self, n_min: int = 1, n_max: int = 20, eval_n_max=None, seed: int = 0):
        super().__init__(3, n_min, n_max, eval_n_max, seed)
