"""Training: every task with every model, short runs that must learn, exact resume,
data-parallel gradients, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fusedrnn.cli import main as cli_main
from fusedrnn.train import CHECKPOINT, TASK_SPECS, TrainConfig, reproducible, train
from fusedrnn.train import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# tiny models: one thread is as fast and does not fight other processes for the cores (conftest.py)
pytestmark = pytest.mark.one_thread


TINY_TASK = {
    "copy": dict(max_len=3, eval_size=16),
    "repeat-copy": dict(max_len=2, max_repeats=2, eval_size=16),
    "associative-recall": dict(max_items=3, eval_size=16),
    "anbn": dict(n_max=4),
    "anbncn": dict(n_max=4),
    "dates": dict(eval_size=16),
    "digit-captions": dict(max_digits=2, eval_size=16),
    "seq-digits": dict(),
    "char-lm": dict(seq_len=16, eval_size=4),
}


def _tiny_model(task, model):
    kw = {"hidden_size": 16}
    if model == "ntm":
        kw.update(memory_size=8, memory_width=4)
    if task == "char-lm":
        kw["embed_size"] = 8
    return kw


def _cfg(task, tmp, **kw):
    base = dict(task=task, steps=2, batch_size=8, eval_every=2, out=str(tmp), task_args=dict(TINY_TASK[task]),
                device="cpu", verbose=False, progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("task,model", [(t, m) for t, s in TASK_SPECS.items() for m in s.models])
def test_every_task_and_model_trains(task, model, tmp_path):
    r = train(_cfg(task, tmp_path, model=model, model_args=_tiny_model(task, model), num_samples=1))
    final = r["final"]
    assert final["step"] == 2 and all(v == v for v in final.values() if isinstance(v, float))
    for name in ("metrics.csv", "metrics.json", "samples.txt", CHECKPOINT):
        assert (tmp_path / name).exists(), name
    figure = {"ntm": "memory_access.png"}.get(model) or ("attention.png" if task == "dates" and model != "no-attention"
                                                        else None)
    if figure:
        assert (tmp_path / figure).stat().st_size > 1000
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_copy_learns(tmp_path):
    """NTM on copy, sequences of 1-4 four-bit vectors: near-zero bit errors."""
    cfg = TrainConfig("copy", steps=400, batch_size=32, eval_every=200, lr=1e-2, device="cpu", verbose=False,
                      task_args=dict(width=4, max_len=4, eval_size=128),
                      model_args=dict(hidden_size=32, memory_size=16, memory_width=8))
    final = train(cfg)["final"]
    assert final["bit_errors"] < 0.1, final


def test_dates_learn(tmp_path):
    """Seq2seq + attention: exact match far above chance (chance is ~0) after a short run."""
    cfg = TrainConfig("dates", steps=150, batch_size=32, eval_every=150, lr=1e-2, device="cpu", verbose=False,
                      task_args=dict(eval_size=128), model_args=dict(hidden_size=32, embed_size=16))
    final = train(cfg)["final"]
    assert final["exact_match"] > 0.5, final


def test_anbn_learns(tmp_path):
    """StackRNN on a^n b^n (n <= 10): the deterministic next symbols are predicted."""
    cfg = TrainConfig("anbn", steps=200, batch_size=32, eval_every=200, lr=1e-2, device="cpu", verbose=False,
                      task_args=dict(n_max=10))
    final = train(cfg)["final"]
    assert final["det_acc"] > 0.9, final


@pytest.mark.parametrize("task,model_args", [
    ("dates", dict(hidden_size=16, dropout=0.2, recurrent_dropout=0.3, variational=True)),
    ("copy", dict(hidden_size=16, memory_size=8, memory_width=4, recurrent_dropout=0.2)),
    ("seq-digits", dict(hidden_size=16)),   # batch-norm running statistics
])
def test_resume_is_exact(task, model_args, tmp_path):
    kw = dict(model_args=model_args, eval_every=2, checkpoint_every=2, num_samples=0)
    a = train(_cfg(task, tmp_path / "a", steps=6, **kw))
    train(_cfg(task, tmp_path / "b", steps=4, **kw))
    b = train(_cfg(task, tmp_path / "b", steps=6, resume=True, **kw))
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [reproducible(r) for r in a["history"]] == [reproducible(r) for r in b["history"]]
    ca, cb = ckpt.load(str(tmp_path / "a" / CHECKPOINT)), ckpt.load(str(tmp_path / "b" / CHECKPOINT))
    for (ka, va), (kb, vb) in zip(ca["optimizer"]["state"].items(), cb["optimizer"]["state"].items()):
        for name in va:
            assert torch.equal(va[name], vb[name])
    assert torch.equal(ca["rng"][0]["cpu"], cb["rng"][0]["cpu"])
    csv_b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert len(csv_b) == 1 + 3


def test_atomic_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    ckpt.save({"a": torch.ones(2)}, path)

    def boom(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        ckpt.save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load(path)["a"], torch.ones(2)), "a failed write leaves the old checkpoint"
    assert os.listdir(tmp_path) == ["c.pt"]


def _gloo():
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


@pytest.mark.skipif(not _gloo(), reason="torch.distributed with gloo is not available")
def test_ddp_gradients_equal_single_process(tmp_path):
    """torchrun, 2 CPU processes (gloo): the averaged DDP gradients equal one process's
    gradients on the same global batch (float64)."""
    common = ["train", "copy", "--steps", "1", "--batch-size", "8", "--dtype", "float64", "--device", "cpu",
              "--hidden-size", "16", "--model-arg", "memory_size=8", "--model-arg", "memory_width=4",
              "--task-arg", "max_len=5", "--task-arg", "eval_size=8", "--samples", "0", "--no-plots", "--quiet",
              "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    single, ddp = tmp_path / "single.pt", tmp_path / "ddp.pt"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "fusedrnn", *common, "--grad-dump", str(ddp), "--out", str(tmp_path / "ddp")],
                       env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert cli_main([*common, "--grad-dump", str(single), "--out", str(tmp_path / "single")]) == 0
    g1, g2 = ckpt.load(str(single)), ckpt.load(str(ddp))
    assert g1.keys() == g2.keys() and len(g1) > 5
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-10, atol=1e-12, msg=k)
    # the checkpoint holds both ranks' RNG states, and the run resumes only with 2 processes
    assert len(ckpt.load(str(tmp_path / "ddp" / CHECKPOINT))["rng"]) == 2


def test_cli(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "dates", "--steps", "2", "--batch-size", "8", "--eval-every", "2", "--device", "cpu",
            "--hidden-size", "16", "--task-arg", "eval_size=8", "--out", str(out), "--beam-size", "2", "--threads", "1"]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "exact_match" in text and "beam_exact_match" in text and "->" in text     # metrics and samples
    assert (out / "attention.png").exists() and (out / "metrics.json").exists()
    assert cli_main(argv[:3] + ["4"] + argv[4:] + ["--resume", "--quiet"]) == 0
    assert ckpt.load(str(out / CHECKPOINT))["step"] == 4
    assert cli_main(["train", "dates", "--eval-only", "--out", str(out), "--task-arg", "eval_size=4", "--quiet"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["step"] == 4 and report["task_args"]["eval_size"] == 4 and "exact_match" in report["metrics"]
    assert cli_main(["train", "copy", "--model", "nope", "--steps", "1"]) == 2
    assert cli_main(["train", "copy", "--resume", "--out", str(tmp_path / "none")]) == 2
    with pytest.raises(SystemExit):
        cli_main(["train", "copy", "--steps", "0"])
    with pytest.raises(SystemExit):
        cli_main(["train", "not-a-task"])
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    helptext = capsys.readouterr().out
    assert "eval_n_max=60" in helptext and "torchrun" in helptext and "repeat-copy" in helptext


def test_cli_cell_and_option_flags(tmp_path):
    """--cell gru and the flags of the options torch lacks reach the model."""
    import argparse

    from fusedrnn.train import cli as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["train", "char-lm", "--cell", "gru", "--zoneout", "0.1", "--layer-norm",
                              "--weight-dropout", "0.2"])
    cfg = train_cli.config_from_args(args)
    assert {k: cfg.model_args[k] for k in ("cell", "zoneout", "layer_norm", "weight_dropout")} == dict(
        cell="gru", zoneout=0.1, layer_norm=True, weight_dropout=0.2)
    r = train(_cfg("char-lm", tmp_path, model_args=dict(_tiny_model("char-lm", "lm"), **cfg.model_args),
                   num_samples=1))
    assert r["final"]["step"] == 2
    assert cli_main(["train", "copy", "--model", "ntm", "--cell", "gru", "--steps", "1", "--quiet"]) == 2


def _installed(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


CUDA_RUNS = [("copy", "ntm"), ("dates", "bahdanau"), ("seq-digits", "bn-lstm"), ("char-lm", "lm")]


@pytest.mark.gpu
@pytest.mark.timeout_s(120)  # cold Triton compiles of each model's shapes
@pytest.mark.parametrize("task,model", CUDA_RUNS, ids=[f"{t}-{m}" for t, m in CUDA_RUNS])
def test_training_on_cuda(task, model, tmp_path):
    # the GPU machine may lack the optional packages: the digits data (scikit-learn) and figures
    if task == "seq-digits" and not _installed("sklearn"):
        pytest.skip("scikit-learn is not installed here (the digits data)")
    r = train(_cfg(task, tmp_path / task, model=model, device="cuda", steps=3, eval_every=3,
                   model_args=_tiny_model(task, model), plots=_installed("matplotlib")))
    assert r["final"]["step"] == 3 and next(r["model"].parameters()).is_cuda
