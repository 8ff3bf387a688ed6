"""Task generators: shapes, determinism under a seed, and that the answers are right."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import torch

from fusedrnn import tasks
from fusedrnn.tasks import dates as dates_mod
from fusedrnn.tasks.base import BOS, EOS, PAD, UNK, concat_batches, shard_batch
from fusedrnn.tasks.digits import load_digits

SMALL = {
    "copy": dict(max_len=6),
    "repeat-copy": dict(max_len=4, max_repeats=3),
    "associative-recall": dict(max_items=4),
    "anbn": dict(n_max=8),
    "anbncn": dict(n_max=8),
    "dates": dict(eval_size=40),
    "digit-captions": dict(eval_size=40),
    "seq-digits": dict(),
    "char-lm": dict(seq_len=40, eval_size=8),
}


# tiny models: one thread is as fast and does not fight other processes for the cores (conftest.py)
pytestmark = pytest.mark.one_thread



def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_deterministic_and_batched(name):
    t1 = tasks.make(name, seed=3, **SMALL[name])
    t2 = tasks.make(name, seed=3, **SMALL[name])
    b1, b2 = t1.train_batch(5, 8), t2.train_batch(5, 8)
    assert _equal(b1, b2), "same seed and step must give the same batch"
    assert not _equal(b1, t1.train_batch(6, 8)), "another step gives another batch"
    assert not _equal(b1, tasks.make(name, seed=4, **SMALL[name]).train_batch(5, 8)), "another seed, another batch"
    for v in b1.values():
        assert v.shape[0] == 8
    e1, e2 = t1.eval_batches(16), t2.eval_batches(16)
    assert len(e1) == len(e2) and all(_equal(a, b) for a, b in zip(e1, e2))
    # every batch entry shards into equal contiguous parts that concatenate back
    parts = [shard_batch(b1, r, 2) for r in range(2)]
    assert _equal(concat_batches(parts), b1)
    assert t1.describe(b1, 0)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown task"):
        tasks.make("nope")
    with pytest.raises(ValueError):
        tasks.make("copy", min_len=3, max_len=2)
    with pytest.raises(ValueError):
        tasks.make("anbn", n_min=0)


def test_copy_answers():
    t = tasks.CopyTask(width=5, min_len=1, max_len=7, seed=1)
    b = t.train_batch(0, 16)
    x, y, m = b["x"], b["y"], b["mask"]
    assert x.shape[2] == 6 and y.shape[2] == 5
    for i in range(16):
        L = int(x[i, :, 5].argmax())                       # the delimiter step
        assert x[i, L, 5] == 1 and x[i, :, 5].sum() == 1
        assert m[i].sum() == L and m[i, L + 1:2 * L + 1].all()
        assert torch.equal(y[i, L + 1:2 * L + 1], x[i, :L, :5])
        assert x[i, L:, :5].sum() == 0                      # no input while answering
    ev = t.eval_batches(64)
    assert sum(e["x"].shape[0] for e in ev) == t.eval_size
    long = tasks.CopyTask(max_len=20, eval_min_len=40, eval_max_len=40).eval_batches(8)[0]
    assert long["mask"].sum(1).eq(40).all()


def test_repeat_copy_answers():
    t = tasks.RepeatCopyTask(width=4, max_len=5, max_repeats=4, seed=2)
    b = t.train_batch(0, 12)
    for i in range(12):
        L = int(b["x"][i, :, 4].argmax())
        R = round(float(b["x"][i, L, 5]) * 4)
        seq = b["x"][i, :L, :4]
        out = b["y"][i, L + 1:L + 1 + L * R, :4]
        assert torch.equal(out, seq.repeat(R, 1))
        assert b["y"][i, L + 1 + L * R, 4] == 1 and b["y"][i, :, 4].sum() == 1
        assert b["mask"][i].sum() == L * R + 1


def test_associative_recall_answers():
    t = tasks.AssociativeRecallTask(width=5, item_len=3, max_items=5, seed=3)
    b = t.train_batch(0, 12)
    for i in range(12):
        x = b["x"][i]
        starts = (x[:, 5] == 1).nonzero().flatten().tolist()
        items = [x[s + 1:s + 4, :5] for s in starts]
        q0, q1 = (x[:, 6] == 1).nonzero().flatten().tolist()
        query = x[q0 + 1:q1, :5]
        j = [k for k, it in enumerate(items) if torch.equal(it, query)][0]
        ans = b["y"][i][b["mask"][i]]
        assert torch.equal(ans, items[j + 1])


@pytest.mark.parametrize("letters", [2, 3])
def test_counting_languages(letters):
    t = tasks.make("anbn" if letters == 2 else "anbncn", n_max=9, eval_n_max=12, seed=0)
    b = t.train_batch(0, 10)
    sym = "_$abc"
    for i in range(10):
        n = int(b["n"][i])
        m = b["mask"][i]
        x = "".join(sym[v] for v in b["x"][i][m].tolist())
        y = "".join(sym[v] for v in b["y"][i][m].tolist())
        body = "a" * n + "b" * n + ("c" * n if letters == 3 else "")
        assert x == "$" + body and y == body + "$"
        det = b["det"][i][m]
        assert det.sum() == (letters - 1) * n               # every step after the first b
        assert not det[:n + 1].any()
    ev = t.eval_batches(4)
    assert len(ev) == 1 and ev[0]["n"].tolist() == list(range(1, 13))
    # scoring: the targets score perfectly, a wrong deterministic symbol is caught
    s = tasks.aggregate([t.score(ev[0]["y"], ev[0])])
    assert s["det_acc"] == 1 and s["seq_acc"] == 1 and s["correct_up_to"] == 12
    bad = ev[0]["y"].clone()
    bad[6, ev[0]["det"][6].nonzero()[0]] = 1                # n = 7 gets one wrong
    s = tasks.aggregate([t.score(bad, ev[0])])
    assert s["correct_up_to"] == 6 and s["seq_acc"] == pytest.approx(11 / 12)


def test_dates_formats_are_unambiguous_and_answers_iso():
    seen = {}
    for day in range(0, dates_mod.NUM_DAYS, 7):
        for f in range(len(dates_mod.FORMATS)):
            s = dates_mod.human(day, f)
            assert seen.setdefault(s, day) == day, f"{s!r} means two dates"
    assert dates_mod.human(25994, 0) == "3 March 2021" and dates_mod.iso(25994) == "2021-03-03"
    assert dates_mod.human(25994, 4) == "Wed, Mar 3 2021"
    assert dates_mod.human(25994, 6) == "03/03/21"
    t = tasks.DatesTask(seed=0, eval_size=64)
    b = t.train_batch(0, 64)
    assert (b["src"] != UNK).all() and (b["tgt_out"] != UNK).all()
    for i in range(64):
        day = int(b["day"][i])
        assert t.src_vocab.decode(b["src"][i]) == dates_mod.human(day, int(b["fmt"][i]))
        assert t.tgt_vocab.decode(b["tgt_out"][i]) == datetime.date.fromisoformat(dates_mod.iso(day)).isoformat()
        assert b["tgt_in"][i, 0] == BOS and b["tgt_out"][i, 10] == EOS
        assert b["src"][i, int(b["src_len"][i]) - 1] == EOS and (b["src"][i, int(b["src_len"][i]):] == PAD).all()
    assert (b["day"] % 10 != 0).all()                        # training dates
    ev = t.eval_batches(64)[0]
    assert (ev["day"] % 10 == 0).all()                       # held-out dates
    assert tasks.aggregate([t.score(ev["tgt_out"], ev)])["exact_match"] == 1


def test_digit_captions_answers():
    images, labels = load_digits()
    t = tasks.DigitCaptionsTask(min_digits=1, max_digits=3, seed=0)
    b = t.train_batch(0, 10)
    assert b["features"].shape == (10, 192) and b["image"].shape == (10, 8, 24)
    flat = images.reshape(len(images), -1)
    for i in range(10):
        text = t.vocab.decode(b["tgt_out"][i])
        assert 1 <= len(text) <= 3
        for j, ch in enumerate(text):
            block = b["image"][i, :, 8 * j:8 * j + 8].numpy().reshape(-1)
            hits = np.nonzero((flat == block).all(1))[0]
            assert len(hits) and int(labels[hits[0]]) == int(ch)
            assert set(hits) & set(t.train_idx.tolist())        # drawn from the training split
        assert b["image"][i, :, 8 * len(text):].abs().sum() == 0
    assert set(t.train_idx).isdisjoint(t.test_idx)
    assert tasks.aggregate([t.score(b["tgt_out"], b)])["exact_match"] == 1


def test_seq_digits_answers():
    images, labels = load_digits()
    t = tasks.SeqDigitsTask(seed=0)
    b = t.train_batch(0, 16)
    assert b["x"].shape == (16, 8, 8) and b["y"].shape == (16,)
    for i in range(16):
        hits = [k for k in t.train_idx if np.array_equal(images[k], b["x"][i].numpy())]
        assert hits and labels[hits[0]] == b["y"][i]
    ev = t.eval_batches(100)
    assert sum(len(e["y"]) for e in ev) == len(t.test_idx) == t.eval_size


def test_char_lm_data(tmp_path):
    t = tasks.TextLMTask(seq_len=30, seed=0)
    with open(t.path, encoding="utf-8") as f:
        text = f.read()
    assert len(text) == 1_115_394 and text.startswith("First Citizen")  # the whole Tiny Shakespeare ships
    b = t.train_batch(0, 4)
    assert torch.equal(b["x"][:, 1:], b["y"][:, :-1])
    for i in range(4):
        assert t.decode(b["x"][i]) in text
    assert t.decode(t.encode("To be")) == "To be"
    p = tmp_path / "words.txt"
    p.write_text("the cat sat\non the mat\n" * 50)
    w = tasks.TextLMTask(path=str(p), level="word", seq_len=5, seed=0)
    assert w.decode(w.train_batch(0, 1)["x"][0]).split()[0] in {"the", "cat", "sat", "on", "mat", "<eos>"}
    with pytest.raises(FileNotFoundError):
        tasks.TextLMTask(path=str(tmp_path / "missing.txt"))


def test_vendored_text_is_packaged():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    pkg = cfg["tool"]["setuptools"]["package-data"]
    assert any("data/*.txt" in p for p in pkg.get("fusedrnn.tasks", []))
    assert (root / "fusedrnn/tasks/data/README.md").read_text().count("char-rnn")
