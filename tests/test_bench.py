"""The benchmark suite's plumbing: records in the documented format (docs/guide.md, "Benchmark records"), the table, the plots,
the CLI's arguments (bad ones rejected with a clear message), the model-level benchmark."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fusedrnn.bench import harness, suite
from fusedrnn.bench.suite import Point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [Point(4, 6, 8, 8), Point(8, 6, 8, 8)]


def test_records_have_the_design_keys_and_append(tmp_path):
    recs = suite.run("quick", device=torch.device("cpu"), out=str(tmp_path), points=TINY, reps=2,
                     variants=("plain", "variational+bn"), backends=["native"], progress=False)
    assert recs and all(tuple(r) == harness.RECORD_KEYS for r in recs)
    path = tmp_path / (harness.device_slug(torch.device("cpu")) + ".jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == len(recs)
    r = json.loads(lines[0])
    assert r["torch"] == torch.__version__ and r["median_ms"] > 0 and r["p20_ms"] <= r["p80_ms"]
    providers = {x["provider"] for x in recs}
    assert {"torch-cpu", "fusedrnn-native", "loop"} <= providers
    assert not any(x["provider"] == "torch-cpu" and x["variant"] != "plain" for x in recs)
    suite.run("quick", device=torch.device("cpu"), out=str(tmp_path), points=TINY[:1], reps=1,
              variants=("plain",), backends=["native"], modes=("fwd",), progress=False)
    assert len(path.read_text().splitlines()) > len(lines)  # appended, not overwritten


def test_gru_rows_compare_with_nn_gru():
    """A GRU point records its variants as "gru:<variant>", runs torch's GRU (not its LSTM) as
    the baseline and the GRU loop; its rows' speedups are over nn.GRU's plain time."""
    recs = suite.run("cpu", device=torch.device("cpu"), out=None, points=[Point(4, 6, 8, 8, rnn="gru")], reps=1,
                     variants=("plain", "zoneout"), backends=["native"], modes=("fwd+bwd",), progress=False)
    assert {(r["provider"], r["variant"]) for r in recs} == {
        ("torch-cpu", "gru:plain"), ("fusedrnn-native", "gru:plain"), ("fusedrnn-native", "gru:zoneout"),
        ("loop", "gru:plain")}
    t = {(r["provider"], r["variant"]): r["median_ms"] for r in recs}
    header, rows = suite.summarize(recs)
    col = header.index("native vs torch-cpu")
    by_variant = {row[header.index("variant")]: row[col] for row in rows}
    assert by_variant["gru:zoneout"] == f"{t['torch-cpu', 'gru:plain'] / t['fusedrnn-native', 'gru:zoneout']:.2f}x"
    screen = {row[3]: row[4] for row in suite.console_rows(recs)[1]}
    assert screen["gru:zoneout"] == suite._ms(t["torch-cpu", "gru:plain"])


def test_table_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from fusedrnn.bench.plots import plot_all

    recs = suite.run("quick", device=torch.device("cpu"), out=None, points=TINY, reps=1,
                     variants=("plain", "variational+bn"), backends=["native"], progress=False)
    header, rows = suite.summarize(recs)
    assert "native vs torch-cpu" in header and rows
    paths = plot_all(recs, str(tmp_path), "t")
    names = {os.path.basename(p) for p in paths}
    assert {"t-speedup-batch.png", "t-regularized-cost.png"} <= names
    for p in paths:
        assert os.path.getsize(p) > 1000


def test_percentile_and_budget():
    assert harness.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert harness.percentile([2.0], 0.2) == 2.0
    calls = []
    t = harness.time_group({"a": lambda k: calls.append(k)}, torch.device("cpu"), warmup=1, reps=50, budget_s=1e-9)
    assert t["a"].samples == 3  # the budget cuts to the minimum of three


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fusedrnn", "bench", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args,msg", [
    (["--reps", "0"], "--reps"), (["--threads", "0"], "--threads"), (["--budget-s", "-1"], "--budget-s"),
    (["--preset", "nope"], "--preset"), (["--dtype", "int8"], "--dtype"), (["--mode", "bwd"], "--mode"),
    (["--variant", "dropout"], "--variant"), (["--backend", "cudnn"], "--backend"),
])
def test_cli_rejects_bad_arguments(args, msg, capsys):
    """`python -m fusedrnn bench` exits 2 naming the bad option (in process: fusedrnn.cli.main
    is what the module entry point runs; the next test runs the real entry point)."""
    from fusedrnn import cli

    try:
        code = cli.main(["bench", *args, "--out", ""])  # a check after parsing returns 2
    except SystemExit as e:  # argparse's own checks exit 2
        code = e.code
    assert code == 2 and msg in capsys.readouterr().err


def test_cli_entry_point_rejects_a_bad_argument():
    r = _cli("--reps", "0", "--out", "")
    assert r.returncode == 2 and "--reps" in r.stderr, r.stderr


@pytest.mark.parametrize("args,msg", [(["--only", "gpu-tests,sanitise"], "unknown stage sanitise"),
                                      (["--fast"], "unknown option --fast")])
def test_gpu_check_rejects_bad_options(args, msg, tmp_path):
    """A typo in a second call's --only must not quietly run nothing on the lent GPU."""
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), *args, str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_cli_quick_run_writes_records_and_plots(tmp_path):
    r = _cli("--preset", "quick", "--mode", "fwd", "--variant", "plain", "--variant", "variational+bn", "--reps", "1",
             "--backend", "native",
             "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    files = os.listdir(tmp_path)
    assert any(f.endswith(".jsonl") for f in files) and any(f.endswith("-quick.md") for f in files)
    assert any(f.endswith(".png") for f in files)


def test_model_benchmark_swaps_to_torch_modules():
    from torch import nn

    from fusedrnn.bench.models import MODEL_POINTS, run_models, to_torch_modules
    from fusedrnn.models import Seq2Seq

    m = Seq2Seq(10, 12, attention="bahdanau")
    t = to_torch_modules(m)
    assert not any(type(x).__module__.startswith("fusedrnn.modules") for x in t.modules())
    assert any(isinstance(x, nn.LSTMCell) for x in t.modules())
    recs = run_models(torch.device("cpu"), ["native"], None, reps=1, points=MODEL_POINTS[:1])
    assert {r["provider"] for r in recs} == {"fusedrnn-native", "torch-cpu"}
    assert all(r["mode"] == "train-step" and r["variant"].startswith("model:") for r in recs)


def test_dropin_word_lm_times_the_converted_copy_against_the_original():
    from fusedrnn.bench import harness as H
    from fusedrnn.bench.models import dropin_word_lm

    recs = dropin_word_lm(torch.device("cpu"), 1, 0.01, H.environment(torch.device("cpu")))
    assert {r["provider"] for r in recs} == {"fusedrnn-auto", "torch-cpu"}
    assert all(r["variant"].startswith("dropin:word-lm") and r["median_ms"] > 0 for r in recs)


def test_records_are_appended_after_every_group(tmp_path, monkeypatch):
    """A run cut short (the GPU check's time guard) keeps the groups it measured."""
    real, calls = harness.time_group, []

    def second_group_dies(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(harness, "time_group", second_group_dies)
    with pytest.raises(KeyboardInterrupt):
        suite.run("quick", device=torch.device("cpu"), out=str(tmp_path), points=TINY, reps=1,
                  variants=("plain",), backends=["native"], modes=("fwd",), progress=False)
    lines = (tmp_path / (harness.device_slug(torch.device("cpu")) + ".jsonl")).read_text().splitlines()
    assert {json.loads(x)["B"] for x in lines} == {TINY[0].B}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("options", [dict(), dict(recurrent_dropout=0.3, variational=True),
                                     dict(recurrent_dropout=0.3, batch_norm=True)], ids=["plain", "v", "rd+bn"])
def test_loop_baseline_computes_the_modules_recurrence(cell, options):
    """The loop baseline is the fused module's recurrence written step by step: the same
    outputs with the same weights, masks (the same draws from the same seed) and batch norm
    (gammas 1, eps as nn.BatchNorm1d's, one slot per step)."""
    import fusedrnn
    from fusedrnn.bench.loop import LoopGRU, LoopLSTM

    T, B, I, H = 5, 4, 3, 6
    torch.manual_seed(0)
    loop = (LoopGRU if cell == "gru" else LoopLSTM)(I, H, max_steps=T, **options).double().train()
    kw = dict(bn_max_steps=T, bn_eps=1e-5) if options.get("batch_norm") else {}
    ours = (fusedrnn.GRU if cell == "gru" else fusedrnn.LSTM)(I, H, dtype=torch.float64, backend="reference",
                                                             **options, **kw).train()
    with torch.no_grad():
        ours.weight_ih_l0.copy_(loop.ih.weight)
        ours.weight_hh_l0.copy_(loop.hh.weight)
        ours.bias_ih_l0.copy_(loop.ih.bias)
        ours.bias_hh_l0.copy_(loop.hh.bias if loop.hh.bias is not None else torch.zeros_like(loop.ih.bias))
        for n, p in ours.named_parameters():
            if n.startswith("bn_"):
                p.fill_(1.0 if "weight" in n else 0.0)
        if options.get("batch_norm"):  # the loop's BN_x removes W_ih's bias and BN_h has none: no bias at all
            ours.bias_ih_l0.zero_()
            ours.bias_hh_l0.zero_()
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(1)
    want = loop(x)[0]
    torch.manual_seed(1)
    got = ours(x)[0]
    torch.testing.assert_close(got, want)


def test_loop_baseline_at_the_first_point_only(monkeypatch):
    monkeypatch.setitem(suite.PRESETS, "t", dict(points=TINY, variants=("plain",), loop="first"))
    recs = suite.run("t", device=torch.device("cpu"), out=None, reps=1, backends=["native"], modes=("fwd",),
                     progress=False)
    assert {r["B"] for r in recs if r["provider"] == "loop"} == {TINY[0].B}
    assert {r["B"] for r in recs if r["provider"] == "fusedrnn-native"} == {p.B for p in TINY}
    assert suite.PRESETS["anchors"]["loop"] == "first"


def test_correctness_step_passes_and_catches_a_wrong_design(tmp_path, monkeypatch):
    """The GPU check's correctness step, on the CPU (native against torch's LSTM and the
    float64 reference): it passes, and a design whose output is off by one part in a
    thousand fails against the 2x-torch bound."""
    from fusedrnn.bench import correctness as cc

    shapes = [(cc.Shape("t", 6, 4, 40), "fp32")]
    designs = {"native": ("native", "auto"), "cuda persistent": ("cuda", "persistent")}
    rows = cc.run_check(torch.device("cpu"), designs, shapes, budget_s=60, out=str(tmp_path))
    assert [(r.design, r.verdict) for r in rows] == [("native", "ok"), ("cuda persistent", "skipped")] * 2
    assert all(r.err <= r.bound for r in rows if r.verdict == "ok")
    data = json.loads((tmp_path / "correctness.json").read_text())
    assert len(data) == 4 and "| native | t | fp32 | v+bn | ok |" in (tmp_path / "correctness.md").read_text()

    real = cc._run

    def off(module, x, gy, seed):
        out = real(module, x, gy, seed)
        if getattr(module, "backend", None) == "native":
            out["y"] = out["y"] * (1 + 1e-3)
        return out

    monkeypatch.setattr(cc, "_run", off)
    rows = cc.run_check(torch.device("cpu"), designs, shapes, budget_s=60, out=None)
    assert [r.verdict for r in rows if r.design == "native"] == ["FAIL", "FAIL"]
    assert cc.main(["--sanitize", "--dry-run"]) == 0


def test_sanitize_cases_run_on_the_native_backend(capsys):
    from fusedrnn.bench import correctness as cc

    cc.sanitize(torch.device("cpu"), backend="native", dtypes=("fp32",))
    assert "every case ran" in capsys.readouterr().out


def test_gpu_check_script_parses():
    """benchmarks/gpu_check.sh is valid bash (the full dry run is part of make test)."""
    r = subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_gpu_check_runs_every_file_with_gpu_tests():
    """A GPU test in a file the check does not list would never run on the lent GPU."""
    import glob
    import re

    script = open(os.path.join(ROOT, "benchmarks", "gpu_check.sh")).read()
    listed = set(re.findall(r"tests/test_\w+\.py", script.split("GPU_TESTS=(", 1)[1].split(")", 1)[0]))
    marked = {os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
              if re.search(r"^(@pytest\.mark\.gpu\b|pytestmark\b.*\bgpu\b)", open(f).read(), re.M)}
    assert marked and marked <= listed, marked - listed
    assert all(os.path.exists(os.path.join(ROOT, f)) for f in listed), listed


def test_screen_table_fits_110_columns_and_leaves_the_reference_out(capsys):
    recs = suite.run("quick", device=torch.device("cpu"), out=None, points=[Point(4, 6, 8, 8), Point(128, 6, 64, 64)],
                     reps=1, variants=tuple(suite.VARIANTS), backends=["native", "reference"], progress=False)
    suite.print_table(recs, "fusedrnn bench --preset quick on some long device name (torch 9.99, 100 s)")
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 110, out
    header, rows = suite.console_rows(recs)
    assert {r[5] for r in rows} == {"native"}  # the best contender; the oracle only on request
    assert {r[5] for r in suite.console_rows(recs, include_reference=True)[1]} <= {"native", "reference"}
    assert len(rows) == 2 * 2 * len(suite.VARIANTS)  # points x modes x variants


def test_regularized_cost_plot_has_one_bar_per_variant_and_the_loop(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from fusedrnn.bench import plots

    recs = suite.run("quick", device=torch.device("cpu"), out=None, points=TINY[:1], reps=1,
                     variants=tuple(suite.VARIANTS), backends=["native", "reference"], progress=False)
    import matplotlib.axes

    seen = {}
    real_bar = matplotlib.axes.Axes.bar

    def bar(self, x, ys, *a, label=None, **kw):
        seen[label] = ys
        return real_bar(self, x, ys, *a, label=label, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    plots.plot_all(recs, str(tmp_path), "t")
    assert set(seen) == {f"fusedrnn, {v}" for v in suite.VARIANTS} | {"loop, variational+bn"}
