"""The decisions (fusedrnn.ops.decision): which backend runs a configuration and why, the one
cache and its keys, the GPU rules (compute capability, cuDNN for plain configurations,
validated backends first, committed measurements), all pure decisions tested without a GPU;
and what a call pays for deciding (one Config per layer, autocast read once).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fusedrnn
from fusedrnn import ops
from fusedrnn.backends import compiled
from fusedrnn.backends import cuda as cuda_backend
from fusedrnn.core import contract
from fusedrnn.core.contract import Config, NormMode
from fusedrnn.ops import decision, evidence


def _cfg(arch="sm_90", dtype=torch.bfloat16, **kw):
    """A configuration on a GPU of class ``arch`` (no GPU here to ask: a CPU configuration
    with its device facts replaced)."""
    cfg = Config.build(torch.device("cpu"), dtype, 50, 16, 64, 64, requires_grad=True)
    return dataclasses.replace(cfg, device_type=kw.pop("device_type", "cuda"), arch=arch, **kw)


@pytest.fixture
def no_evidence(monkeypatch):
    monkeypatch.setattr(evidence, "load", lambda path=evidence.PATH: {"validated": {}, "faster": []})
    decision._CACHE.clear()
    yield
    decision._CACHE.clear()


# ---- the cache -----------------------------------------------------------------------------


def test_one_cache_keyed_on_the_decision_switches(monkeypatch, no_evidence):
    """Every decision (module and op) lives in one cache; the environment switches a decision
    reads are part of its key, so flipping one (the GPU tests do) decides afresh; the
    sequence length is not (one decision serves every T)."""
    assert cuda_backend.UNVERIFIED_ENV in decision.DECISION_ENV and "FUSEDRNN_BACKEND" in decision.DECISION_ENV
    seen = []
    real = decision._decide

    def spy(*args):
        seen.append(args)
        return real(*args)

    monkeypatch.setattr(decision, "_decide", spy)
    cfg = Config.build(torch.device("cpu"), torch.float32, 7, 2, 4, 4, zoneout=True)
    monkeypatch.delenv(cuda_backend.UNVERIFIED_ENV, raising=False)
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)
    decision.decide_op("auto", cfg)
    decision.decide_op("auto", dataclasses.replace(cfg, T=99))
    assert len(seen) == 1
    monkeypatch.setenv(cuda_backend.UNVERIFIED_ENV, "1")
    decision.decide_op("auto", cfg)
    assert len(seen) == 2
    monkeypatch.setenv("FUSEDRNN_BACKEND", "reference")
    assert decision.decide_op("auto", cfg).backend.name == "reference"
    assert len(seen) == 3
    m = fusedrnn.LSTM(4, 4, recurrent_dropout=0.1)
    m(torch.randn(3, 2, 4))
    m(torch.randn(5, 2, 4))
    assert len(seen) == 4 and len(decision._CACHE) == 4  # the module's decision: one more entry
    x = torch.randn(3, 2, 4)
    monkeypatch.delenv("FUSEDRNN_BACKEND")
    assert m.decide(x).backend.name == "native"
    monkeypatch.setenv("FUSEDRNN_BACKEND", "reference")  # a module's cached decision follows the switch
    assert m.decide(x).backend.name == "reference"


def test_a_call_builds_one_config_per_layer_and_reads_autocast_once(monkeypatch):
    """A module call decides once (one Config, autocast read once) and each layer builds its
    own Config once; the layers take the module's decision as it is."""
    builds, autocast_reads = [], []
    real_build, real_autocast = Config.build, ops.layer.autocast_dtype

    def counting_build(*a, **k):
        builds.append(a)
        return real_build(*a, **k)

    def counting_autocast(x):
        autocast_reads.append(1)
        return real_autocast(x)

    monkeypatch.setattr(Config, "build", staticmethod(counting_build))
    monkeypatch.setattr(ops, "autocast_dtype", counting_autocast)
    monkeypatch.setattr(ops.layer, "autocast_dtype", counting_autocast)
    m = fusedrnn.LSTM(3, 4, num_layers=2, bidirectional=True, recurrent_dropout=0.2, batch_norm=True)
    decision._CACHE.clear()
    m(torch.randn(5, 3, 3))[0].sum().backward()
    assert len(builds) == 1 + 4 and len(autocast_reads) == 1  # the decision's Config (a miss), each layer's
    m(torch.randn(7, 3, 3))[0].sum().backward()
    assert len(builds) == 5 + 4 and len(autocast_reads) == 2  # a decision taken before builds none


def test_explicit_backend_that_cannot_run_names_why():
    cfg = Config.build(torch.device("cpu"), torch.bfloat16, 3, 2, 4, 4)
    with pytest.raises(ops.BackendError, match="native.*float32 or float64"):
        decision.decide_op("native", cfg)


# ---- the rules -------------------------------------------------------------------------------


def test_build_records_its_cuda_targets():
    if not compiled.has_kernel("lstm_layer_forward", "CUDA"):
        pytest.skip("built without CUDA kernels")
    kinds = {(k, a, b) for k, a, b, _ in cuda_backend.TARGETS}
    assert {("sm", 8, 0), ("sm", 9, 0), ("compute", 9, 0)} <= kinds  # the default list, with PTX


@pytest.mark.parametrize("capability,ok", [((7, 5), False), ((8, 0), True), ((8, 6), True), ((8, 9), True),
                                           ((9, 0), True), ((10, 0), True), ((12, 0), True)],
                         ids=["T4", "A100", "A10", "L4", "H100", "B200", "RTX50"])
def test_cuda_backend_offered_only_where_the_build_runs(capability, ok):
    targets = cuda_backend.parse_targets("sm_80/compute_90/sm_90")
    why = cuda_backend.cuda_arch_reason(capability, targets)
    assert (why is None) == ok, why
    if not ok:
        assert f"sm_{capability[0]}{capability[1]}" in why and "TORCH_CUDA_ARCH_LIST" in why
    # without PTX, a newer major version has nothing to run; an arch-specific image only its arch
    assert cuda_backend.cuda_arch_reason((10, 0), cuda_backend.parse_targets("sm_80/sm_90")) is not None
    assert cuda_backend.cuda_arch_reason((9, 0), cuda_backend.parse_targets("sm_90a")) is None
    assert cuda_backend.cuda_arch_reason((10, 0), cuda_backend.parse_targets("sm_90a")) is not None


def test_cuda_backend_refuses_an_arch_without_code():
    why = cuda_backend.BACKEND.unsupported_reason(_cfg(arch="sm_75"))
    if not compiled.has_kernel("lstm_layer_forward", "CUDA"):
        assert "not built" in why
    else:
        assert "no kernel image or PTX" in why and "sm_75" in why
        assert cuda_backend.BACKEND.unsupported_reason(_cfg(arch="sm_90")) is None


def _rule(kind="rnn", name="auto", regularized=False, training=True, **cfg):
    return decision.module_rule(kind, name, _cfg(**{"H": 768, **cfg}), regularized, training)


def test_gpu_plain_runs_cudnn_without_evidence(no_evidence):
    aten, rule = _rule()
    assert aten and "cuDNN" in rule and "no committed measurement" in rule
    assert _rule(training=False, requires_grad=False)[0]  # inference: cuDNN
    aten, rule = _rule(training=False, requires_grad=True)  # backward in eval mode: cuDNN refuses it
    assert not aten and "eval mode" in rule
    aten, rule = _rule(regularized=True)
    assert not aten and "lacks" in rule
    assert _rule(name="triton") == (False, "backend='triton' was requested")


def test_gpu_plain_runs_fused_inside_a_measured_range(monkeypatch):
    """A committed rule (shape ranges its measurements span) sends plain LSTMs of that GPU
    class, dtype and mode inside the ranges to the fused design; elsewhere cuDNN."""
    rule = dict(arch="sm_90", dtype="bfloat16", mode="fwd+bwd", B=[1, 32], H=[256, 1024], backend="cuda",
                source="benchmarks/results/h100-sxm.jsonl, 2026-12-01")
    monkeypatch.setattr(evidence, "load", lambda path=evidence.PATH: {"validated": {}, "faster": [rule]})
    aten, why = _rule(B=16)
    assert not aten and "h100-sxm.jsonl" in why
    assert not _rule(B=32, H=256)[0]  # the ranges are inclusive
    assert _rule(B=64)[0]  # outside the measured batch sizes: cuDNN
    assert _rule(B=16, H=128)[0]  # outside the measured hidden sizes
    assert _rule(B=16, arch="sm_80")[0]  # another GPU class
    assert _rule(B=16, dtype=torch.float16)[0]  # another dtype
    assert _rule(B=16, requires_grad=False, training=False)[0]  # only fwd+bwd was measured


def test_evidence_rules_are_checked_when_loaded(tmp_path):
    bad = tmp_path / "evidence.json"
    bad.write_text('{"faster": [{"arch": "sm_90", "dtype": "bfloat16", "mode": "fwd", "B": 16, "H": [1, 2], '
                   '"backend": "cuda", "source": "x"}]}')
    with pytest.raises(ValueError, match=r"\[lo, hi\]"):
        evidence.load.__wrapped__(str(bad))


def test_gpu_regularized_prefers_validated_backends(no_evidence, monkeypatch):
    order, rule = decision.candidates("auto", _cfg())
    assert order == ("cuda", "triton", "reference") and "no backend has passed" in rule
    real_get = fusedrnn.backends.get
    monkeypatch.setattr(fusedrnn.backends, "get", lambda n: _FakeBackend("ffff") if n == "triton" else real_get(n))
    monkeypatch.setattr(evidence, "load", lambda path=evidence.PATH: {
        "validated": {"triton": {"sm_90": {"note": "H200", "fingerprint": "ffff"}}}, "faster": []})
    order, rule = decision.candidates("auto", _cfg())
    assert order == ("triton", "cuda", "reference") and "triton passed its GPU tests" in rule
    assert decision.candidates("auto", _cfg(arch="sm_80"))[0] == ("cuda", "triton", "reference")
    assert decision.candidates("cuda", _cfg())[0] == ("cuda",)


def test_committed_evidence_is_well_formed():
    ev = evidence.load()
    assert set(ev) == {"validated", "faster"}
    for backend, archs in ev["validated"].items():
        assert backend in fusedrnn.backends.NAMES and all(a.startswith("sm_") for a in archs)
        assert all(set(v) == {"note", "fingerprint"} for v in archs.values())


class _FakeBackend:
    def __init__(self, fp):
        self.fp = fp

    def fingerprint(self):
        return self.fp


def test_a_validation_counts_only_for_the_kernels_it_ran(tmp_path, monkeypatch):
    """A validation records the backend's fingerprint; once the kernels change (another
    fingerprint) it is stale: it no longer orders the backends, and the rule says why."""
    path = str(tmp_path / "evidence.json")
    evidence.record("triton", "sm_90", "H100, today", "aaaa", path)
    uncached = evidence.load.__wrapped__
    monkeypatch.setattr(evidence, "load", lambda p=path: uncached(path))
    decision._CACHE.clear()
    real_get = fusedrnn.backends.get
    for fp, order, words in [("aaaa", ("triton", "cuda", "reference"), "with the installed kernels"),
                             ("bbbb", ("cuda", "triton", "reference"), "earlier version of its kernels")]:
        monkeypatch.setattr(fusedrnn.backends, "get",
                            lambda n, fp=fp: _FakeBackend(fp) if n == "triton" else real_get(n))
        got, rule = decision.candidates("auto", _cfg())
        assert got == order and words in rule, rule
    assert evidence.status("cuda", "sm_90", "aaaa") == ("none", None)


def test_fingerprints_follow_the_sources(tmp_path):
    from fusedrnn.core.digest import digest_tree

    (tmp_path / "k.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not a source")
    a = digest_tree(str(tmp_path), (".py",), "triton 3.8")
    (tmp_path / "notes.txt").write_text("changed, still not a source")
    assert digest_tree(str(tmp_path), (".py",), "triton 3.8") == a
    assert digest_tree(str(tmp_path), (".py",), "triton 3.9") != a  # another compiler
    (tmp_path / "k.py").write_text("x = 2\n")
    assert digest_tree(str(tmp_path), (".py",), "triton 3.8") != a  # another kernel
    if "triton" in fusedrnn.backends.NAMES and fusedrnn.backends.get("triton") is not None:
        assert len(fusedrnn.backends.get("triton").fingerprint()) == 16


def test_the_gpu_check_records_backends_whose_gpu_tests_all_passed(tmp_path):
    xml = tmp_path / "gpu-tests.xml"
    xml.write_text('<testsuites><testsuite>'
                   '<testcase classname="tests.test_cuda" name="a"/>'
                   '<testcase classname="tests.test_cuda" name="b"><failure/></testcase>'
                   '<testcase classname="tests.test_triton_gpu" name="c"/>'
                   '<testcase classname="tests.test_triton_gpu" name="d"><skipped/></testcase>'
                   '<testcase classname="tests.test_models" name="e"><failure/></testcase>'
                   '</testsuite></testsuites>')
    assert evidence.junit_verdicts(str(xml)) == [("cuda", 1, 1), ("triton", 1, 0)]


def test_unvalidated_kernels_on_a_gpu_warn_once(monkeypatch):
    monkeypatch.setattr(evidence, "load", lambda path=evidence.PATH: {"validated": {}, "faster": []})
    monkeypatch.setattr(decision, "_WARNED", set())
    with pytest.warns(UserWarning, match="triton kernels run on this sm_90 .* never"):
        decision._warn_unvalidated("triton", "sm_90")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decision._warn_unvalidated("triton", "sm_90")  # once per backend and GPU class


def test_cpu_rules():
    cpu = dict(arch="", device_type="cpu", dtype=torch.float32)
    aten, why = _rule(**cpu)  # a plain float32 LSTM training at B = 16: native, on the records
    assert not aten and "cpu preset" in why and str(decision.LSTM_NATIVE_MAX_B) in why
    assert _rule(B=decision.LSTM_NATIVE_MAX_B + 1, **cpu)[0]  # beyond the measured batches: torch's
    assert _rule(requires_grad=False, **cpu)[0]  # inference: torch's (oneDNN) measures faster
    assert _rule(training=False, **cpu)[0]  # eval mode: torch's
    assert _rule(proj=True, **cpu)[0]  # a projection: no fused step
    assert _rule(arch="", device_type="cpu", dtype=torch.float64)[0]
    assert not _rule(regularized=True, **cpu)[0]
    assert decision.candidates("auto", _cfg(**cpu))[0] == ("native", "reference")


def test_norm_modes_name_every_norm():
    assert {m.name for m in NormMode} == {"NONE", "BATCH_TRAIN", "BATCH_EVAL", "LAYER"}
    assert NormMode.BATCH_TRAIN.batch and NormMode.BATCH_EVAL.batch and not NormMode.LAYER.batch
    assert contract.NormMode.of(None) == NormMode.NONE


def test_the_layers_run_the_modules_decision(monkeypatch):
    """Each layer runs the backend the module decided on, not a decision of its own."""
    from fusedrnn.backends import reference

    calls = []
    real = reference.ReferenceBackend.recurrence

    def spy(self, *args, **kw):
        calls.append(1)
        return real(self, *args, **kw)

    monkeypatch.setattr(reference.ReferenceBackend, "recurrence", spy)
    fusedrnn.LSTM(3, 4, num_layers=2, recurrent_dropout=0.2, backend="reference")(torch.randn(5, 2, 3))
    assert len(calls) == 2
