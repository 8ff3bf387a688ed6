"""The experiments (fusedrnn.experiments, ``python -m fusedrnn experiment NAME``): every one
runs in its smoke mode (a few steps of every part) through the command line and writes
its figures, tables and run record; the committed results that docs/EXPERIMENTS.md shows
exist and were produced by the command they name."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from fusedrnn.cli import main as cli_main
from fusedrnn.experiments import EXPERIMENTS, get
from fusedrnn.experiments.run import PRESET_NAMES, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "EXPERIMENTS.md")
FIGURES = {
    "dropout": ["dropout_curves.png", "mask_survival.png"],
    "batchnorm": ["batchnorm_curves.png"],
    "gradients": ["gradient_norms.png"],
    "attention": ["attention_alignments.png", "attention_accuracy.png"],
    "ntm": ["ntm_copy.png", "ntm_weightings.png"],
}
TABLES = {
    "dropout": ["dropout.csv", "mask_survival.csv"],
    "batchnorm": ["batchnorm.csv"],
    "gradients": ["gradients.csv"],
    "attention": ["accuracy_by_length.csv", "accuracy_by_format.csv", "copy_by_length.csv"],
    "ntm": ["ntm_copy.csv"],
}


# tiny models: one thread is as fast and does not fight other processes for the cores (conftest.py)
pytestmark = pytest.mark.one_thread


def test_registry_and_presets():
    assert set(FIGURES) == set(EXPERIMENTS)
    for name in EXPERIMENTS:
        m = get(name)
        assert m.NAME == name and m.TITLE and m.CLAIM
        for preset in PRESET_NAMES:
            cfg = resolve(m, preset)
            assert cfg["seeds"], (name, preset)
        # --full is larger than the default, the smoke run smaller
        d, f = resolve(m, "default"), resolve(m, "full")
        assert f != d


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_smoke_run_writes_figures_tables_and_record(name, tmp_path, capsys):
    out = tmp_path / name
    assert cli_main(["experiment", name, "--smoke", "--out", str(out), "--quiet"]) == 0
    for f in FIGURES[name]:
        assert (out / f).stat().st_size > 5000, f          # a real PNG, not an empty canvas
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for t in TABLES[name]:
        lines = (out / t).read_text().splitlines()
        assert len(lines) >= 2, t
    record = json.loads((out / "run.json").read_text())
    assert record["experiment"] == name and record["preset"] == "smoke"
    assert record["command"] == f"python -m fusedrnn experiment {name} --smoke --out {out} --quiet"
    assert record["torch"] == torch.__version__ and record["device"].startswith("CPU")
    assert record["duration_s"] >= 0 and record["seeds"]
    assert sorted(record["figures"]) == sorted(FIGURES[name])
    md = (out / "results.md").read_text()
    assert record["command"] in md and "![" in md
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_cli_errors(tmp_path, capsys):
    assert cli_main(["experiment", "list"]) == 0
    assert "dropout" in capsys.readouterr().out
    assert cli_main(["experiment", "dropout", "--smoke", "--out", str(tmp_path), "--set", "nope=1", "--quiet"]) == 2
    assert "no setting 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["experiment", "not-an-experiment"])
    with pytest.raises(SystemExit):
        cli_main(["experiment", "dropout", "--smoke", "--full"])


def test_overrides_and_seeds(tmp_path):
    out = tmp_path / "g"
    argv = ["experiment", "gradients", "--smoke", "--out", str(out), "--seeds", "3", "4", "--set", "seq_len=6",
            "--set", "models=['tanh-rnn']", "--quiet"]
    assert cli_main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["seeds"] == [3, 4] and record["config"]["seq_len"] == 6
    assert list(record["summary"]) == ["tanh-rnn"]


def test_mask_survival_matches_the_analytic_rate():
    """Survival over k steps from the drawn masks: (1 - p)^k per step, 1 - p for a shared mask."""
    from fusedrnn.ops.dropout import recurrent_mask, survival_probability

    torch.manual_seed(0)
    per_step = recurrent_mask(0.1, 10, 512, 256, torch.empty(0), shared=False)
    shared = recurrent_mask(0.1, 10, 512, 256, torch.empty(0), shared=True)
    assert survival_probability(per_step, 10) == pytest.approx(0.9 ** 10, rel=0.02)
    assert survival_probability(shared, 10) == pytest.approx(0.9, abs=0.005)


def test_gradient_probe_steps_the_trained_weights():
    """The stepped network used for d loss / d h_t computes what the trained network computes."""
    from fusedrnn.experiments.gradients import Model, gradient_profile, make_batch

    x, y = make_batch(0, 1, 0, 4, 7, 5)
    for kind in ("tanh-rnn", "lstm", "lstm, forget bias 1"):
        torch.manual_seed(0)
        m = Model(kind, 5, 6)
        prof, diff = gradient_profile(m, x, y)
        assert diff < 1e-5 and prof.shape == (7,) and (prof > 0).all()


def test_dropout_schemes_use_the_right_masks():
    from fusedrnn.experiments.dropout import CharLM

    for scheme, (rec, var) in {"none": (0, False), "naive": (0.3, False), "nonrec": (0, False),
                               "variational": (0.3, True), "naive+nonrec": (0.3, False)}.items():
        for cell in ("lstm", "gru"):
            m = CharLM(11, 4, 6, 2, scheme, 0.3, cell)
            assert type(m.rnn).__name__ == cell.upper()
            assert m.rnn.recurrent_dropout == rec and m.rnn.variational == var
            assert m.rnn.dropout == (0.3 if scheme in ("nonrec", "variational", "naive+nonrec") else 0)
    assert CharLM(11, 4, 6, 2, "zoneout", 0.3, "gru").rnn.zoneout == 0.05  # a GRU: the hidden rate
    m = CharLM(11, 4, 6, 2, "variational", 0.5).train()
    x = torch.ones(3, 5, 4)
    y = m._drop(x)
    assert torch.equal(y, y[:, :1].expand_as(y))   # one mask per sequence, the same at every step
    y = CharLM(11, 4, 6, 2, "nonrec", 0.5).train()._drop(torch.ones(3, 50, 4))
    assert not torch.equal(y, y[:, :1].expand_as(y))


# -- the committed results -----------------------------------------------------------------------

def _committed():
    return [n for n in EXPERIMENTS if os.path.exists(os.path.join(ROOT, "docs", "figures", n, "run.json"))]


def test_committed_results_are_complete_and_shown():
    names = _committed()
    if not os.path.exists(DOC):
        pytest.skip("docs/EXPERIMENTS.md not written yet")
    doc = open(DOC).read()
    assert names == list(EXPERIMENTS), "every experiment has committed results"
    for n in names:
        d = os.path.join(ROOT, "docs", "figures", n)
        record = json.load(open(os.path.join(d, "run.json")))
        assert record["preset"] == "default"
        # made by this experiment's own command, or by 'all' (which runs each with its defaults);
        # --quiet only silences the console
        command = record["command"].replace(" --quiet", "")
        assert command in (f"python -m fusedrnn experiment {n}", "python -m fusedrnn experiment all")
        assert record["duration_s"] <= 600, (n, record["duration_s"])
        for f in FIGURES[n]:
            assert os.path.exists(os.path.join(d, f)), f
            assert f"figures/{n}/{f}" in doc, f"docs/EXPERIMENTS.md does not show {n}/{f}"
        assert f"python -m fusedrnn experiment {n}" in doc
    for path in re.findall(r"\]\((figures/[^)]+)\)", doc):
        assert os.path.exists(os.path.join(ROOT, "docs", path)), path
