"""Tasks on scikit-learn's 8×8 handwritten digits (``sklearn.datasets.load_digits``, 1797
images that ship inside scikit-learn; nothing is downloaded).

- :class:`DigitCaptionsTask` (``kind = "caption"``): 1…max_digits digit images placed side
  by side -> the digit string ("407").
- :class:`SeqDigitsTask` (``kind = "classify"``): one digit read row by row (8 steps of 8
  pixels) -> its class; the sequential-MNIST setting of the BN-LSTM paper, at 8×8.

The images are split once (seeded by ``split_seed``): ``test_fraction`` of them are only
used for evaluation.  Pixels are scaled to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import BOS, EOS, PAD, Batch, Task, Vocab, pad_sequences

_DIGITS = None


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] float32 in [0, 1], labels [1797] int64), cached."""
    global _DIGITS
    if _DIGITS is None:
        try:
            from sklearn.datasets import load_digits as _load
        except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
            raise ImportError("the digits tasks need scikit-learn (pip install scikit-learn)") from e
        d = _load()
        _DIGITS = (d.images.astype(np.float32) / 16.0, d.target.astype(np.int64))
    return _DIGITS


class _DigitsSplit(Task):
    def __init__(self, test_fraction: float, split_seed: int, seed: int, eval_size: int):
        super().__init__(seed, eval_size)
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        self.test_fraction, self.split_seed = float(test_fraction), int(split_seed)
        images, labels = load_digits()
        perm = np.random.default_rng(self.split_seed).permutation(len(labels))
        n_test = int(round(len(labels) * self.test_fraction))
        self.test_idx, self.train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        self.images, self.labels = images, labels

    def config(self) -> dict:
        return dict(super().config(), test_fraction=self.test_fraction, split_seed=self.split_seed)


class DigitCaptionsTask(_DigitsSplit):
    """Multi-digit captioning: k in [min_digits, max_digits] digits side by side -> "d1…dk".

    Batches: features [B, 64 * max_digits] float (the [8, 8 * max_digits] image, right-padded
    with zeros, flattened row-major), image [B, 8, 8 * max_digits], tgt_in [B, max_digits + 1]
    (BOS + digits), tgt_out [B, max_digits + 1] (digits + EOS), mask [B, max_digits + 1].
    Target vocabulary: pad, bos, eos, unk, "0"…"9".
    """

    name = "digit-captions"
    kind = "caption"
    default_batch_size = 64

    def __init__(self, min_digits: int = 1, max_digits: int = 4, test_fraction: float = 0.2,
                 split_seed: int = 0, seed: int = 0, eval_size: int = 512):
        super().__init__(test_fraction, split_seed, seed, eval_size)
        if not (isinstance(min_digits, int) and isinstance(max_digits, int)) or not 1 <= min_digits <= max_digits:
            raise ValueError(f"expected integers 1 <= min_digits <= max_digits, got ({min_digits!r}, {max_digits!r})")
        self.min_digits, self.max_digits = min_digits, max_digits
        self.vocab = Vocab("0123456789")
        self.feature_size = 64 * max_digits
        self.max_tgt_len = max_digits + 1

    def config(self) -> dict:
        return dict(super().config(), min_digits=self.min_digits, max_digits=self.max_digits)

    def make_batch(self, rng: np.random.Generator, batch_size: int, train: bool) -> Batch:
        pool = self.train_idx if train else self.test_idx
        ks = rng.integers(self.min_digits, self.max_digits + 1, size=batch_size)
        img = np.zeros((batch_size, 8, 8 * self.max_digits), np.float32)
        tgt = []
        for b, k in enumerate(ks):
            idx = rng.choice(pool, size=k)
            for j, i in enumerate(idx):
                img[b, :, 8 * j:8 * (j + 1)] = self.images[i]
            tgt.append(self.vocab.encode(str(int(d)) for d in self.labels[idx]))
        L = self.max_tgt_len
        tgt_in = pad_sequences([[BOS] + t for t in tgt], length=L)
        tgt_out = pad_sequences([t + [EOS] for t in tgt], length=L)
        image = torch.from_numpy(img)
        return {"features": image.reshape(batch_size, -1), "image": image, "tgt_in": tgt_in,
                "tgt_out": tgt_out, "mask": tgt_out != PAD}

    def score(self, pred: Tensor, batch: Batch) -> dict:
        """pred [B, L] decoded ids -> exact_match, digit_acc (position-wise)."""
        exact = right = total = 0
        for i in range(pred.shape[0]):
            p, t = self.vocab.decode(pred[i]), self.vocab.decode(batch["tgt_out"][i])
            exact += p == t
            right += sum(a == b for a, b in zip(p, t))
            total += len(t)
        return {"exact_match": (exact, pred.shape[0]), "digit_acc": (right, total)}

    def describe(self, batch: Batch, i: int, pred=None) -> str:
        img = batch["image"][i].numpy()
        rows = ["".join(" .:-=+*#%@"[min(int(v * 10), 9)] for v in r) for r in img]
        t = self.vocab.decode(batch["tgt_out"][i])
        s = "\n".join(rows) + f"\ntarget {t}"
        if pred is not None:
            p = self.vocab.decode(pred[i])
            s += f"  predicted {p}{'' if p == t else '  (wrong)'}"
        return s


class SeqDigitsTask(_DigitsSplit):
    """One 8×8 digit read row by row: x [B, 8, 8] (8 steps of 8 pixels), y [B] in 0…9.

    Training samples images (with replacement) from the training split; evaluation is the
    whole test split (``eval_size`` is ignored).
    """

    name = "seq-digits"
    kind = "classify"
    input_size = 8
    num_classes = 10
    default_batch_size = 64

    def __init__(self, test_fraction: float = 0.2, split_seed: int = 0, seed: int = 0):
        super().__init__(test_fraction, split_seed, seed, 0)
        self.eval_size = len(self.test_idx)

    def config(self) -> dict:
        return dict(seed=self.seed, test_fraction=self.test_fraction, split_seed=self.split_seed)

    def _batch(self, idx) -> Batch:
        return {"x": torch.from_numpy(self.images[idx]), "y": torch.from_numpy(self.labels[idx])}

    def make_batch(self, rng: np.random.Generator, batch_size: int, train: bool) -> Batch:
        return self._batch(rng.choice(self.train_idx if train else self.test_idx, size=batch_size))

    def eval_batches(self, batch_size: int) -> list[Batch]:
        """The whole test split in order."""
        return [self._batch(self.test_idx[i:i + batch_size]) for i in range(0, len(self.test_idx), batch_size)]

    def score(self, pred: Tensor, batch: Batch) -> dict:
        """pred [B] class ids -> accuracy."""
        return {"accuracy": ((pred == batch["y"].to(pred.device)).sum().item(), pred.shape[0])}

    def describe(self, batch: Batch, i: int, pred=None) -> str:
        s = f"label {int(batch['y'][i])}"
        if pred is not None:
            s += f" predicted {int(pred[i])}"
        return s
