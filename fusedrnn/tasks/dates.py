"""Date normalization (``kind = "seq2seq"``): many human date formats -> ISO 8601.

    "3 March 2021", "March 3, 2021", "03/03/21", "Wed, Mar 3 2021", "2021.03.03", …
        -> "2021-03-03"

Dates are uniform over 1950-01-01 … 2049-12-31, so two-digit years are unambiguous
(yy >= 50 -> 19yy).  Slashes are month-first (US) when the year comes last, dots are
day-first when the year comes last, so every string has exactly one reading.  Every tenth
day (by day number) is held out for evaluation: evaluation dates never occur in training.

Source and target are character sequences over their own vocabularies (pad 0, bos 1,
eos 2, unk 3, then characters).
"""

from __future__ import annotations

import datetime

import numpy as np
import torch
from torch import Tensor

from .base import BOS, EOS, PAD, Batch, Task, Vocab, pad_sequences

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
START = datetime.date(1950, 1, 1)
NUM_DAYS = (datetime.date(2049, 12, 31) - START).days + 1


def _ordinal(d: int) -> str:
    suffix = "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


# Every format: date -> string.  (d: day, m: month number, y: year)
FORMATS = (
    lambda t: f"{t.day} {MONTHS[t.month - 1]} {t.year}",                    # 3 March 2021
    lambda t: f"{t.day:02d} {MONTHS[t.month - 1]} {t.year}",                # 03 March 2021
    lambda t: f"{MONTHS[t.month - 1]} {t.day}, {t.year}",                   # March 3, 2021
    lambda t: f"{MONTHS[t.month - 1][:3]} {t.day}, {t.year}",               # Mar 3, 2021
    lambda t: f"{DAYS[t.weekday()][:3]}, {MONTHS[t.month - 1][:3]} {t.day} {t.year}",  # Wed, Mar 3 2021
    lambda t: f"{DAYS[t.weekday()]}, {MONTHS[t.month - 1]} {t.day}, {t.year}",  # Wednesday, March 3, 2021
    lambda t: f"{t.month:02d}/{t.day:02d}/{t.year % 100:02d}",              # 03/03/21
    lambda t: f"{t.month:02d}/{t.day:02d}/{t.year}",                        # 03/03/2021
    lambda t: f"{t.month}/{t.day}/{t.year}",                                # 3/3/2021
    lambda t: f"{t.year}.{t.month:02d}.{t.day:02d}",                        # 2021.03.03
    lambda t: f"{t.day:02d}.{t.month:02d}.{t.year}",                        # 03.03.2021
    lambda t: f"{t.year}{t.month:02d}{t.day:02d}",                          # 20210303
    lambda t: f"{t.day} {MONTHS[t.month - 1][:3]} {t.year % 100:02d}",      # 3 Mar 21
    lambda t: f"{MONTHS[t.month - 1].lower()} {t.day} {t.year}",            # march 3 2021
    lambda t: f"{MONTHS[t.month - 1].upper()} {t.day}, {t.year}",           # MARCH 3, 2021
    lambda t: f"{_ordinal(t.day)} of {MONTHS[t.month - 1]} {t.year}",       # 3rd of March 2021
    lambda t: f"{t.year}/{t.month:02d}/{t.day:02d}",                        # 2021/03/03
    lambda t: f"{MONTHS[t.month - 1][:3]}-{t.day:02d}-{t.year}",            # Mar-03-2021
    lambda t: f"{t.day:02d}-{MONTHS[t.month - 1][:3].upper()}-{t.year}",    # 03-MAR-2021
    lambda t: f"the {_ordinal(t.day)} of {MONTHS[t.month - 1]}, {t.year}",  # the 3rd of March, 2021
    lambda t: f"{DAYS[t.weekday()][:3]} {t.day:02d} {MONTHS[t.month - 1][:3]} {t.year}",  # Wed 03 Mar 2021
    lambda t: f"{t.year}-{t.month}-{t.day}",                                # 2021-3-3
)

_SOURCE_CHARS = sorted(set("".join(MONTHS) + "".join(MONTHS).upper() + "".join(MONTHS).lower()
                           + "".join(DAYS) + "0123456789 ,./-" + "stndrdthofe"))


def date_of(day: int) -> datetime.date:
    """Day number (0 = 1950-01-01) -> date."""
    return START + datetime.timedelta(days=int(day))


def human(day: int, fmt: int) -> str:
    return FORMATS[fmt](date_of(day))


def iso(day: int) -> str:
    return date_of(day).isoformat()


class DatesTask(Task):
    """Human date strings -> "YYYY-MM-DD".

    Batches: src [B, S] long (chars, EOS-terminated, padded), src_len [B] long,
    tgt_in [B, 11] long (BOS + 10 chars), tgt_out [B, 11] long (10 chars + EOS),
    mask [B, 11] bool; plus day [B] and fmt [B] (the date and format that made each row).
    """

    name = "dates"
    kind = "seq2seq"
    default_batch_size = 64

    def __init__(self, formats=None, seed: int = 0, eval_size: int = 512):
        super().__init__(seed, eval_size)
        self.formats = list(range(len(FORMATS))) if formats is None else [int(f) for f in formats]
        if not self.formats or any(not 0 <= f < len(FORMATS) for f in self.formats):
            raise ValueError(f"formats must be indices in [0, {len(FORMATS)}), got {formats!r}")
        self.src_vocab = Vocab(_SOURCE_CHARS)
        self.tgt_vocab = Vocab("0123456789-")
        self.max_tgt_len = 11
        days = np.arange(NUM_DAYS)
        self.train_days = days[days % 10 != 0]
        self.eval_days = days[days % 10 == 0]

    def config(self) -> dict:
        return dict(super().config(), formats=self.formats)

    def encode(self, days, fmts) -> Batch:
        src = [self.src_vocab.encode(human(d, f)) + [EOS] for d, f in zip(days, fmts)]
        tgt = [self.tgt_vocab.encode(iso(d)) for d in days]
        src_len = torch.tensor([len(s) for s in src], dtype=torch.long)
        tgt_in = pad_sequences([[BOS] + t for t in tgt])
        tgt_out = pad_sequences([t + [EOS] for t in tgt])
        return {"src": pad_sequences(src), "src_len": src_len, "tgt_in": tgt_in, "tgt_out": tgt_out,
                "mask": tgt_out != PAD, "day": torch.as_tensor(np.asarray(days), dtype=torch.long),
                "fmt": torch.as_tensor(np.asarray(fmts), dtype=torch.long)}

    def make_batch(self, rng: np.random.Generator, batch_size: int, train: bool) -> Batch:
        days = rng.choice(self.train_days if train else self.eval_days, size=batch_size)
        fmts = rng.choice(self.formats, size=batch_size)
        return self.encode(days, fmts)

    def source_text(self, batch: Batch, i: int) -> str:
        return self.src_vocab.decode(batch["src"][i])

    def score(self, pred: Tensor, batch: Batch) -> dict:
        """pred [B, L] decoded target ids (EOS-terminated or not) -> exact_match, char_acc."""
        exact = chars = total = 0
        for i in range(pred.shape[0]):
            p = self.tgt_vocab.decode(pred[i])
            t = self.tgt_vocab.decode(batch["tgt_out"][i])
            exact += p == t
            chars += sum(a == b for a, b in zip(p, t))
            total += len(t)
        n = pred.shape[0]
        return {"exact_match": (exact, n), "char_acc": (chars, total)}

    def describe(self, batch: Batch, i: int, pred=None) -> str:
        s = f"{self.source_text(batch, i)!r:34} -> {self.tgt_vocab.decode(batch['tgt_out'][i])}"
        if pred is not None:
            p = self.tgt_vocab.decode(pred[i])
            s += f"  predicted {p}{'' if p == self.tgt_vocab.decode(batch['tgt_out'][i]) else '  (wrong)'}"
        return s
