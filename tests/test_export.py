"""Export: torch.export and ONNX (onnxruntime) of models that contain fusedrnn modules.

Under export every call plans standard ops (fusedrnn.ops.decision.export_decision): a configuration
torch's own module computes runs as torch's module (aten.lstm, ONNX's LSTM op), any other
as the reference backend's plain ops.  The exported program carries no fusedrnn:: op, runs
without fusedrnn._C and matches eager; a configuration that cannot be exported (training
mode with run-time masks or batch statistics) raises ExportError naming the option.
"""

import importlib.util
import warnings

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn.models import LanguageModel, SequenceTagger

ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not ONNX, reason="onnx, onnxruntime and onnxscript are not installed "
                                "(pip install -e .[export], or make test installs them)")

# name -> LSTM options; every one exports in eval mode (dropout options are off there, batch
# norm runs on its running statistics).
CONFIGS = {
    "plain": dict(),
    "bidir-2layer": dict(num_layers=2, bidirectional=True),
    "proj": dict(proj_size=8),
    "bn": dict(batch_norm=True),
    "v+bn-2layer-bidir": dict(num_layers=2, bidirectional=True, dropout=0.2, recurrent_dropout=0.25,
                              variational=True, batch_norm=True),
    "recurrent-dropout": dict(recurrent_dropout=0.3),
}


GRU_CONFIGS = {
    "plain": dict(),
    "bidir-2layer-zoneout": dict(num_layers=2, bidirectional=True, recurrent_dropout=0.2, variational=True,
                                 zoneout=0.1),
    "bn": dict(batch_norm=True),
}


def _trained(m: nn.Module, make_input, steps: int = 3) -> nn.Module:
    """A few training-mode calls (batch-norm running statistics move off their init), then eval."""
    m.train()
    with torch.no_grad():
        for _ in range(steps):
            m(make_input())
    return m.eval()


def _lstm(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = fusedrnn.LSTM(16, 32, batch_first=True, **CONFIGS[name])  # the default construction
    return _trained(m, lambda: torch.randn(4, 7, 16)), torch.randn(3, 7, 16)


class _CellLoop(nn.Module):
    """A decoder-style loop over an LSTMCell."""

    def __init__(self, **kw):
        super().__init__()
        self.cell = fusedrnn.LSTMCell(16, 32, **kw)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[1], 32)
        outs = []
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c), step=t) if self.cell.batch_norm else self.cell(x[t], (h, c))
            outs.append(h)
        return torch.stack(outs)


def _models():
    """(name, eval model, example input): modules and whole reference models."""
    out = [(f"lstm-{n}",) + _lstm(n) for n in CONFIGS]
    torch.manual_seed(0)
    out.append(("cell", _CellLoop().eval(), torch.randn(5, 3, 16)))
    out.append(("cell-bn", _trained(_CellLoop(batch_norm=True, recurrent_dropout=0.2),
                                    lambda: torch.randn(5, 4, 16)), torch.randn(5, 3, 16)))
    torch.manual_seed(0)
    lm = LanguageModel(50, 16, 32, num_layers=2, dropout=0.2, recurrent_dropout=0.2, tie_weights=True)
    out.append(("language-model", _trained(lm, lambda: torch.randint(0, 50, (4, 6))), torch.randint(0, 50, (2, 6))))
    tagger = SequenceTagger(5, vocab_size=30, embed_size=8, hidden_size=16, batch_norm=True)
    out.append(("tagger-bn", _trained(tagger, lambda: torch.randint(0, 30, (4, 6))), torch.randint(0, 30, (2, 6))))
    for name, kw in GRU_CONFIGS.items():
        torch.manual_seed(0)
        m = fusedrnn.GRU(16, 32, batch_first=True, **kw)
        out.append((f"gru-{name}", _trained(m, lambda: torch.randn(4, 7, 16)), torch.randn(3, 7, 16)))
    torch.manual_seed(0)
    lm = LanguageModel(50, 16, 16, num_layers=2, dropout=0.2, recurrent_dropout=0.2, cell="gru", layer_norm=True)
    out.append(("gru-language-model", _trained(lm, lambda: torch.randint(0, 50, (4, 6))),
                torch.randint(0, 50, (2, 6))))
    return out


MODELS = _models()


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name,model,x", MODELS, ids=[m[0] for m in MODELS])
def test_torch_export_matches_eager_and_uses_standard_ops(name, model, x):
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("fusedrnn" in t for t in targets), targets
    if name in ("lstm-plain", "lstm-bidir-2layer", "lstm-recurrent-dropout"):
        assert "aten.lstm.input" in targets  # torch's own LSTM: ONNX's LSTM op downstream
    if name == "gru-plain":
        assert "aten.gru.input" in targets
    got, want = _first(ep.module()(x)), _first(model(x))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@needs_onnx
@pytest.mark.parametrize("name,model,x", MODELS, ids=[m[0] for m in MODELS])
def test_onnx_runs_in_onnxruntime(name, model, x):
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    proto = prog.model_proto
    ops = {n.op_type for n in proto.graph.node}
    if name in ("lstm-plain", "lstm-bidir-2layer"):
        assert "LSTM" in ops, ops
    assert not any(n.domain.startswith("fusedrnn") for n in proto.graph.node)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), _first(model(x)).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw,named", [
    (dict(recurrent_dropout=0.25), "recurrent_dropout=0.25"),
    (dict(batch_norm=True), "batch_norm=True"),
    (dict(num_layers=2, dropout=0.5), "dropout=0.5"),
])
def test_training_mode_export_names_the_option(kw, named):
    m = fusedrnn.LSTM(8, 16, **kw).train()
    with pytest.raises(fusedrnn.ExportError, match=named.replace(".", r"\.")):
        torch.export.export(m, (torch.randn(5, 3, 8),))
    # a plain training-mode LSTM has nothing drawn at run time: it exports
    torch.export.export(fusedrnn.LSTM(8, 16).train(), (torch.randn(5, 3, 8),))


def test_explicit_cell_mask_cannot_be_exported():
    cell = fusedrnn.LSTMCell(8, 16).eval()

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x):
            return self.cell(x, mask=torch.ones(x.shape[0], 16))[0]

    with pytest.raises(fusedrnn.ExportError, match="explicit mask"):
        torch.export.export(M(), (torch.randn(3, 8),))


@needs_onnx
def test_onnx_export_error_names_the_option():
    m = fusedrnn.LSTM(8, 16, recurrent_dropout=0.25).train()
    with pytest.raises(Exception, match="recurrent_dropout=0.25"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (torch.randn(5, 3, 8),), dynamo=True, verbose=False)


def test_export_plan_is_portable_for_every_backend():
    """backend='native' (or any) exports as standard ops too: the compiled kernels are not
    part of an exported program; eager calls keep their backend."""
    m = fusedrnn.LSTM(8, 16, backend="native", batch_norm=True).eval()
    x = torch.randn(5, 3, 8)
    ep = torch.export.export(m, (x,))
    assert not any("fusedrnn" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x)[0], m(x)[0], rtol=1e-6, atol=1e-6)
    assert m.decide(x).backend.name == "native"
