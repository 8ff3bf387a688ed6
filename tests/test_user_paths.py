"""The paths users take, as they write them: the default construction (no ``backend=``)
under torch.compile, third-party model code under fusedrnn.patch() or a hand-made
``torch.nn.LSTM = fusedrnn.LSTM``, whole-model save and load under the default
``torch.load`` (weights_only), ``lengths=`` instead of packing, and the Triton launches'
device guard.  The decisions (which backend runs what) are tests/test_decide.py's.
"""

from __future__ import annotations

import importlib
import io
import sys
import textwrap
import types

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import models, serialization
from helpers import CPU_BACKENDS, assert_close

TORCH_LSTM, TORCH_CELL = torch.nn.modules.rnn.LSTM, torch.nn.modules.rnn.LSTMCell


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(autouse=True)
def _no_patch_left():
    """A failing patch test must not leave torch's names or fusedrnn's defaults patched."""
    from fusedrnn.modules import regularizers

    saved = [(home, n, getattr(home, n)) for home in (torch.nn, torch.nn.modules, torch.nn.modules.rnn)
             for n in ("LSTM", "LSTMCell")]
    yield
    for home, n, v in saved:
        setattr(home, n, v)
    regularizers._patch_defaults.clear()
    torch._dynamo.config.allow_rnn = False


def _grads(out, params):
    loss = sum((t.double() * torch.linspace(-1, 1, t.numel(), dtype=torch.float64).view_as(t)).sum()
               for t in out if t is not None and t.is_floating_point())
    return [g for g in torch.autograd.grad(loss, params, allow_unused=True)]


def _flat(y):
    if isinstance(y, torch.Tensor):
        return [y]
    out = []
    for t in y:
        out += _flat(t) if t is not None else []
    return out


# ---- torch.compile on the default construction -------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compile_default_lstm_inductor(training):
    """Exactly what the README promises and users write: the default construction (float32,
    backend "auto") compiled with the default backend, fullgraph, forward and backward."""
    torch.manual_seed(0)
    mod = fusedrnn.LSTM(8, 16, num_layers=2).train(training)
    x = torch.randn(5, 3, 8, requires_grad=True)
    compiled = torch.compile(mod, fullgraph=True)
    got = compiled(x)
    want = mod(x)
    params = [x] + list(mod.parameters())
    for a, b in zip(_flat(got) + _grads(_flat(got), params), _flat(want) + _grads(_flat(want), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _model_cases():
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from test_models import MODELS, _make

    return MODELS, _make


MODEL_NAMES = _model_cases()[0]
# Under compile, the seq2seq attention variants differ only in the model's attention, not in
# the fused layers: two of the four attentions compile here (each one runs eagerly in
# test_models), and the GRU's and luong-dot's in training only.
COMPILE_CASES = [(n, t) for n in MODEL_NAMES + ["cell", "convert"] for t in (True, False)
                 if n not in ("seq2seq:luong-general", "seq2seq:none")
                 and (t or n not in ("seq2seq:luong-dot", "seq2seq-gru:bahdanau"))]


@pytest.mark.parametrize("name,training", COMPILE_CASES,
                         ids=[f"{n}-{'train' if t else 'eval'}" for n, t in COMPILE_CASES])
def test_compile_fullgraph_default_backend_matches_eager(name, training):
    """Every reference model, a default LSTMCell decoder loop and a convert()ed third-party
    model under torch.compile(fullgraph=True) on the default backend: outputs and gradients
    equal to eager (same dropout draws: aot_eager runs the same ops)."""
    torch.manual_seed(0)
    if name == "cell":
        cell = fusedrnn.LSTMCell(3, 4)

        def model(xs):
            hx, outs = None, []
            for t in range(xs.shape[0]):
                hx = cell(xs[t], hx)
                outs.append(hx[0])
            return torch.stack(outs), hx[1]

        module, inputs = cell, (torch.randn(4, 2, 3, requires_grad=True),)
    elif name == "convert":
        module = fusedrnn.convert(nn.Sequential(nn.Linear(3, 5), _LSTMOutput(nn.LSTM(5, 6, 2, dropout=0.2))),
                                  recurrent_dropout=0.2, variational=True)
        model, inputs = module, (torch.randn(7, 2, 3, requires_grad=True),)
    else:
        module, inputs = _model_cases()[1](name, "auto")
        model = module
    module.train(training)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    params = [t for t in inputs if t.requires_grad] + list(module.parameters())
    torch.manual_seed(1)
    got = _flat(compiled(*inputs))
    g_got = _grads(got, params)
    torch.manual_seed(1)
    want = _flat(model(*inputs))
    g_want = _grads(want, params)
    for a, b in zip(got + g_got, want + g_want):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class _LSTMOutput(nn.Module):
    """A third-party wrapper: returns the LSTM's output only."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x):
        return self.lstm(x)[0]


def test_compile_explicit_aten_says_why():
    mod = fusedrnn.LSTM(3, 4, backend="aten")
    with pytest.raises(Exception, match="torch.compile cannot trace"):
        torch.compile(mod, fullgraph=True, backend="aot_eager")(torch.randn(2, 1, 3))


# ---- patch() and patching by hand -----------------------------------------------------------

THIRD_PARTY = '''
"""A model file as a third party writes it: torch.nn names, resolved when the model is built."""
import torch
from torch import nn


class Tagger(nn.Module):
    def __init__(self, vocab=11, emb=8, hidden=12, tags=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, num_layers=2, batch_first=True, dropout=0.1, bidirectional=True)
        self.cell = nn.LSTMCell(2 * hidden, hidden)
        self.out = nn.Linear(hidden, tags)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        h = c = None
        outs = []
        for t in range(y.shape[1]):
            h, c = self.cell(y[:, t], None if h is None else (h, c))
            outs.append(self.out(h))
        return torch.stack(outs, 1)
'''


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    (tmp_path / "third_party_tagger.py").write_text(textwrap.dedent(THIRD_PARTY))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("third_party_tagger", None)
    return importlib.import_module("third_party_tagger")


def _restored():
    return (torch.nn.LSTM is TORCH_LSTM and torch.nn.LSTMCell is TORCH_CELL
            and torch.nn.modules.LSTM is TORCH_LSTM and torch.nn.modules.rnn.LSTMCell is TORCH_CELL)


def test_patch_builds_fusedrnn_modules_with_options_and_restores(third_party):
    tokens = torch.randint(0, 11, (2, 5))
    with fusedrnn.patch(recurrent_dropout=0.25, variational=True) as handle:
        assert handle.active and torch.nn.LSTM is fusedrnn.LSTM and torch.nn.LSTMCell is fusedrnn.LSTMCell
        model = third_party.Tagger()
    assert _restored() and not handle.active
    assert type(model.rnn) is fusedrnn.LSTM and type(model.cell) is fusedrnn.LSTMCell
    assert model.rnn.recurrent_dropout == 0.25 and model.rnn.variational
    assert model.cell.recurrent_dropout == 0.25
    assert model.rnn.dropout == 0.1 and model.rnn.bidirectional  # nn.LSTM's own arguments kept
    # it runs (no recursion into the patched name), trains and evaluates
    y = model(tokens)
    y.sum().backward()
    assert all(p.grad is not None for p in model.rnn.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(tokens)).all()
    # after restore, new modules are torch's again and fusedrnn's defaults are back
    assert type(third_party.Tagger().rnn) is TORCH_LSTM
    assert fusedrnn.LSTM(3, 4).recurrent_dropout == 0.0


def test_patch_handle_restore_nesting_and_explicit_options(third_party):
    outer = fusedrnn.patch(batch_norm=True)
    inner = fusedrnn.patch(recurrent_dropout=0.1, cell=False)
    m = third_party.Tagger()
    assert m.rnn.recurrent_dropout == 0.1 and not m.rnn.batch_norm  # innermost options only
    assert type(m.cell) is fusedrnn.LSTMCell and m.cell.batch_norm  # the outer patch's cell
    assert fusedrnn.LSTM(3, 4, recurrent_dropout=0.3).recurrent_dropout == 0.3  # explicit wins
    inner.restore()
    inner.restore()  # idempotent
    assert torch.nn.LSTM is fusedrnn.LSTM and fusedrnn.LSTM(3, 4).batch_norm
    outer.restore()
    assert _restored() and not fusedrnn.LSTM(3, 4).batch_norm
    assert "restored" in repr(outer)


def test_patch_validates_options_at_once():
    with pytest.raises(ValueError, match="recurrent_dropout"):
        fusedrnn.patch(recurrent_dropout=1.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'zonout'"):
        fusedrnn.patch(zonout=0.1)
    with pytest.raises(ValueError, match="backend"):
        fusedrnn.patch(backend="cudnn")
    assert _restored()


@pytest.mark.parametrize("options", [{}, dict(recurrent_dropout=0.2)], ids=["plain", "regularized"])
def test_patching_by_hand_does_not_recurse(options, monkeypatch):
    """A user who cannot edit a script sets torch.nn.LSTM = fusedrnn.LSTM themselves."""
    monkeypatch.setattr(torch.nn, "LSTM", fusedrnn.LSTM)
    monkeypatch.setattr(torch.nn, "LSTMCell", fusedrnn.LSTMCell)
    lstm = torch.nn.LSTM(3, 4, **options)
    cell = torch.nn.LSTMCell(3, 4, **options)
    y, (h, c) = lstm(torch.randn(5, 2, 3))
    assert y.shape == (5, 2, 4)
    assert cell(torch.randn(2, 3))[0].shape == (2, 4)
    # convert() still finds torch's own classes (not the patched names)
    assert isinstance(fusedrnn.convert(TORCH_LSTM(3, 4)), fusedrnn.LSTM)


def test_compile_under_patch(third_party):
    with fusedrnn.patch():
        model = third_party.Tagger()
        tokens = torch.randint(0, 11, (2, 4))
        torch.manual_seed(1)
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(tokens)
    assert torch._dynamo.config.allow_rnn is False  # restored
    torch.manual_seed(1)  # the same dropout draws
    assert_close(got, model(tokens), dtype=torch.float32)


# ---- whole-model save and load --------------------------------------------------------------

OPTION_SETS = [dict(), dict(recurrent_dropout=0.2, variational=True, batch_norm=True, bn_max_steps=4,
                            bn_momentum=0.2, bn_eps=1e-4, backend="reference")]


def _saved(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def _globals_in(buf: io.BytesIO) -> set[str]:
    """Every global a torch.save'd object's pickle names beyond torch's default allow-list."""
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(buf))
    buf.seek(0)
    return names


def _module_cases():
    cases = []
    for i, opts in enumerate(OPTION_SETS):
        cases.append((f"lstm-{i}", lambda o=opts: fusedrnn.LSTM(3, 4, 2, bidirectional=True, proj_size=2, **o)))
        cases.append((f"cell-{i}", lambda o=opts: fusedrnn.LSTMCell(3, 4, **o)))
    make = _model_cases()[1]
    for name in MODEL_NAMES:
        cases.append((name, lambda n=name: make(n, "auto")[0]))
    return cases


MODULE_CASES = _module_cases()


@pytest.mark.parametrize("name,make", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_whole_module_round_trip_under_default_torch_load(name, make):
    torch.manual_seed(0)
    module = make()
    if isinstance(module, fusedrnn.LSTMCell) and module.variational:
        module(torch.randn(2, 3))  # holds a variational mask: state beyond parameters
    buf = _saved({"model": module, "epoch": 3, "best": 1.5})
    # the pickled state names only tensors, primitive containers and registered classes
    registered = {serialization.full_name(c) for c in serialization.safe_classes()}
    for g in _globals_in(buf):
        assert g in registered, f"{name}: pickle names {g}"
    loaded = torch.load(buf)  # the default: weights_only=True
    assert loaded["epoch"] == 3
    new = loaded["model"]
    assert type(new) is type(module)
    sd, nsd = module.state_dict(), new.state_dict()
    assert list(sd) == list(nsd) and all(torch.equal(sd[k], nsd[k]) for k in sd)
    assert repr(new) == repr(module)


def test_model_built_under_patch_loads_with_a_clients_allow_list(third_party):
    """pytorch/examples' word_language_model loads whole models under an allow-list of torch's
    classes; a model built under patch() loads there, and after the client's block exits
    fusedrnn's classes are still allowed."""
    with fusedrnn.patch(recurrent_dropout=0.1):
        model = third_party.Tagger()
        buf = _saved(model)
        allow = [third_party.Tagger, torch.nn.modules.rnn.LSTM, torch.nn.modules.rnn.LSTMCell,
                 torch.nn.modules.sparse.Embedding, torch.nn.modules.linear.Linear]
        with torch.serialization.safe_globals(allow):
            loaded = torch.load(buf)
    assert type(loaded.rnn) is fusedrnn.LSTM and loaded.rnn.recurrent_dropout == 0.1
    buf = _saved(fusedrnn.LSTM(3, 4))
    assert type(torch.load(buf)) is fusedrnn.LSTM  # still registered


def test_training_checkpoints_load_weights_only(tmp_path):
    from fusedrnn.train import checkpoint

    path = str(tmp_path / "ckpt.pt")
    checkpoint.save({"step": 3, "model": fusedrnn.LSTM(3, 4).state_dict(), "rng": [torch.get_rng_state()]}, path)
    assert checkpoint.load(path)["step"] == 3
    checkpoint.save({"hook": types.SimpleNamespace(x=1)}, path)  # not a weights-only object
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        checkpoint.load(path)


# ---- state_dict round trips ---------------------------------------------------------------------------

I, H = 3, 4


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_every_model_state_dict_round_trips():
    from test_models import MODELS, _make

    for name in MODELS:
        torch.manual_seed(0)
        a, inputs = _make(name, "auto")
        torch.manual_seed(1)
        b, _ = _make(name, "auto")
        if name == "classifier-bn":  # non-default running statistics must travel too
            a.train()
            a(*inputs)
        missing, unexpected = b.load_state_dict(_roundtrip(a.state_dict()))
        assert not missing and not unexpected, name
        for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(u, v), f"{name}: {k}"
        a.eval(), b.eval()
        with torch.no_grad():
            ya, yb = a(*inputs), b(*inputs)
        ya, yb = (ya[0], yb[0]) if isinstance(ya, tuple) else (ya, yb)
        assert torch.equal(ya, yb), name


def test_nn_lstm_checkpoint_loads_both_ways_through_a_file():
    cfg = dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, **cfg)
    ours = fusedrnn.LSTM(I, H, **cfg, recurrent_dropout=0.0)
    ours.load_state_dict(_roundtrip(ref.state_dict()))
    back = nn.LSTM(I, H, **cfg)
    back.load_state_dict(_roundtrip(ours.state_dict()))
    x = torch.randn(2, 5, I)
    for backend in CPU_BACKENDS:
        ours.backend = backend
        torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), back.parameters()))
    cell, ref_cell = fusedrnn.LSTMCell(I, H), nn.LSTMCell(I, H)
    cell.load_state_dict(_roundtrip(ref_cell.state_dict()))
    ref_cell.load_state_dict(_roundtrip(cell.state_dict()))
    xc = torch.randn(2, I)
    torch.testing.assert_close(cell(xc)[0], ref_cell(xc)[0])


# ---- lengths= instead of packing --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "aten", "native", "reference"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_equal_pack_pad(backend, batch_first):
    torch.manual_seed(0)
    m = fusedrnn.LSTM(3, 4, 2, bidirectional=True, batch_first=batch_first, dtype=torch.float64, backend=backend)
    shape = (3, 6, 3) if batch_first else (6, 3, 3)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    yp, (hp, cp) = m(packed)
    yp, _ = pad_packed_sequence(yp, batch_first=batch_first, total_length=6)
    y, (h, c) = m(x, lengths=lengths)
    for a, b in zip((y, h, c), (yp, hp, cp)):
        assert_close(a, b)
    ga = torch.autograd.grad((y * y).sum() + h.sum() + c.sum(), [x] + list(m.parameters()))
    gb = torch.autograd.grad((yp * yp).sum() + hp.sum() + cp.sum(), [x] + list(m.parameters()))
    for a, b in zip(ga, gb):
        assert_close(a, b)


def test_lengths_zero_keeps_the_initial_state():
    m = fusedrnn.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    h0, c0 = torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    for backend in ("aten", "native"):
        m.backend = backend
        y, (h, c) = m(x, (h0, c0), lengths=torch.tensor([5, 0]))
        assert torch.equal(y[:, 1], torch.zeros(5, 4)) and torch.equal(h[:, 1], h0[:, 1]) and torch.equal(c[:, 1], c0[:, 1])


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([5.0, 2.0]), "int64"), (torch.tensor([5]), "one entry per sequence"),
    (torch.tensor([6, 2]), r"\[0, T = 5\]"), (torch.tensor([[5, 2]]), "1-D")])
def test_lengths_bad(bad, match):
    with pytest.raises(ValueError, match=match):
        fusedrnn.LSTM(3, 4)(torch.randn(5, 2, 3), lengths=bad)


# ---- devices ---------------------------------------------------------------------------------


def test_triton_launches_under_a_device_guard(monkeypatch):
    tr = pytest.importorskip("fusedrnn.backends.triton.host")
    guard = tr.device_guard(types.SimpleNamespace(device=torch.device("cuda", 1)))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    if fusedrnn.ops.decision.unavailable_reason("triton", torch.device("cpu")) is not None:
        return
    seen = []
    real = tr.device_guard

    def recording(t):
        seen.append(t.device)
        return real(t)

    monkeypatch.setattr(tr, "device_guard", recording)
    m = fusedrnn.LSTM(3, 4, backend="triton", dtype=torch.float64)
    m(torch.randn(4, 2, 3, dtype=torch.float64))[0].sum().backward()
    assert len(seen) == 2 and all(d.type == "cpu" for d in seen)  # forward and backward op


@pytest.mark.gpu
def test_triton_on_a_second_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    torch.cuda.set_device(0)
    m = fusedrnn.LSTM(16, 32, backend="triton", recurrent_dropout=0.1, device="cuda:1")
    x = torch.randn(10, 4, 16, device="cuda:1", requires_grad=True)
    y, _ = m(x)
    y.sum().backward()
    ref = fusedrnn.LSTM(16, 32, backend="reference", device="cuda:1")
    ref.load_state_dict(m.state_dict())
    m.eval(), ref.eval()
    torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-3, atol=1e-3)
