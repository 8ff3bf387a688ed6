"""Bad arguments raise nn.LSTM's / nn.LSTMCell's exception class, and our own options
raise a clear exception naming the argument."""

import pytest
import torch
from torch import nn

import fusedrnn

CTOR_BAD = [
    dict(args=(0, 4)),
    dict(args=(3, 0)),
    dict(args=(3.0, 4)),
    dict(args=(3, "4")),
    dict(args=(3, 4), kw=dict(num_layers=0)),
    dict(args=(3, 4), kw=dict(dropout=1.5)),
    dict(args=(3, 4), kw=dict(dropout=True)),
    dict(args=(3, 4), kw=dict(bias=1)),
    dict(args=(3, 4), kw=dict(batch_first="yes")),
    dict(args=(3, 4), kw=dict(proj_size=-1)),
    dict(args=(3, 4), kw=dict(proj_size=4)),
]


@pytest.mark.parametrize("case", CTOR_BAD, ids=lambda c: f"{c['args']}-{c.get('kw')}")
def test_constructor_errors_match_nn_lstm(case):
    kw = case.get("kw", {})
    with pytest.raises(Exception) as ref:
        nn.LSTM(*case["args"], **kw)
    with pytest.raises(type(ref.value)) as ours:
        fusedrnn.LSTM(*case["args"], **kw)
    assert str(ours.value) == str(ref.value)


OPTION_BAD = [
    (dict(recurrent_dropout=1.0), ValueError, "recurrent_dropout"),
    (dict(recurrent_dropout=-0.1), ValueError, "recurrent_dropout"),
    (dict(recurrent_dropout="0.1"), ValueError, "recurrent_dropout"),
    (dict(variational=1), TypeError, "variational"),
    (dict(batch_norm="yes"), TypeError, "batch_norm"),
    (dict(bn_max_steps=0), ValueError, "bn_max_steps"),
    (dict(bn_max_steps=2.5), ValueError, "bn_max_steps"),
    (dict(bn_momentum=1.5), ValueError, "bn_momentum"),
    (dict(bn_momentum=-0.1), ValueError, "bn_momentum"),
    (dict(bn_eps=0.0), ValueError, "bn_eps"),
    (dict(bn_eps=-1e-5), ValueError, "bn_eps"),
    (dict(backend="cudnn"), ValueError, "backend"),
]


@pytest.mark.parametrize("cls", [fusedrnn.LSTM, fusedrnn.LSTMCell])
@pytest.mark.parametrize("kw,exc,name", OPTION_BAD, ids=[str(o[0]) for o in OPTION_BAD])
def test_option_errors_name_the_argument(cls, kw, exc, name):
    with pytest.raises(exc, match=name):
        cls(3, 4, **kw)


def _forward_cases():
    I, H = 3, 4
    x = torch.randn(5, 2, I)
    return [
        ("4-D input", (x.unsqueeze(0),), {}),
        ("1-D input", (torch.randn(I),), {}),
        ("wrong input_size", (torch.randn(5, 2, I + 1),), {}),
        ("wrong dtype", (x.double(),), {}),
        ("h0 wrong batch", (x, (torch.zeros(1, 3, H), torch.zeros(1, 2, H))), {}),
        ("c0 wrong size", (x, (torch.zeros(1, 2, H), torch.zeros(1, 2, H + 1))), {}),
        ("h0 2-D for batched", (x, (torch.zeros(2, H), torch.zeros(2, H))), {}),
        ("h0 3-D for unbatched", (torch.randn(5, I), (torch.zeros(1, 1, H), torch.zeros(1, 1, H))), {}),
        ("h0 wrong layers", (x, (torch.zeros(2, 2, H), torch.zeros(2, 2, H))), {}),
    ]


# "auto" with a plain CPU module runs torch's own LSTM; the fused backends check by themselves.
ERROR_BACKENDS = ["auto"] + fusedrnn.available_backends("cpu")


@pytest.mark.parametrize("backend", ERROR_BACKENDS)
@pytest.mark.parametrize("case", _forward_cases(), ids=lambda c: c[0])
def test_forward_errors_match_nn_lstm(case, backend):
    _, args, kw = case
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4)
    ours = fusedrnn.LSTM(3, 4, backend=backend)
    with pytest.raises(Exception) as r:
        ref(*args, **kw)
    with pytest.raises(type(r.value)):
        ours(*args, **kw)


CELL_CASES = [
    ("3-D input", (torch.randn(2, 2, 3),)),
    ("wrong input_size", (torch.randn(2, 4),)),
    ("hx wrong batch", (torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(3, 4)))),
    ("hx wrong size", (torch.randn(2, 3), (torch.zeros(2, 5), torch.zeros(2, 5)))),
    ("hx 3-D", (torch.randn(2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))),
]


@pytest.mark.parametrize("backend", ERROR_BACKENDS)
@pytest.mark.parametrize("case", CELL_CASES, ids=lambda c: c[0])
def test_cell_errors_match_nn_lstmcell(case, backend):
    _, args = case
    ref, ours = nn.LSTMCell(3, 4), fusedrnn.LSTMCell(3, 4, backend=backend)
    with pytest.raises(Exception) as r:
        ref(*args)
    with pytest.raises(type(r.value)) as o:
        ours(*args)
    if isinstance(r.value, RuntimeError):
        assert str(o.value) in str(r.value) or str(r.value) in str(o.value)


def test_backend_unavailable_is_explicit():
    lstm = fusedrnn.LSTM(3, 4, backend="cuda")
    with pytest.raises(fusedrnn.BackendError, match="cuda"):
        lstm(torch.randn(5, 2, 3))


def test_batch_norm_needs_a_batch_in_training():
    lstm = fusedrnn.LSTM(3, 4, batch_norm=True)
    with pytest.raises(ValueError, match="batch_norm"):
        lstm(torch.randn(5, 1, 3))
    with pytest.raises(ValueError, match="batch_norm"):
        lstm(torch.randn(5, 3))  # unbatched
    lstm.eval()(torch.randn(5, 1, 3))  # eval uses the running statistics
    cell = fusedrnn.LSTMCell(3, 4, batch_norm=True)
    with pytest.raises(ValueError, match="batch_norm"):
        cell(torch.randn(1, 3))


def test_env_override_of_auto(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_BACKEND", "reference")
    lstm = fusedrnn.LSTM(3, 4)
    assert "reference" in fusedrnn.explain(lstm, torch.randn(5, 2, 3))
    monkeypatch.setenv("FUSEDRNN_BACKEND", "nope")
    with pytest.raises(ValueError, match="FUSEDRNN_BACKEND"):
        lstm(torch.randn(5, 2, 3))


def test_auto_runs_plain_cpu_modules_as_torch_and_aten_refuses_regularizers():
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, num_layers=2, dropout=0.3)
    ours = fusedrnn.LSTM(3, 4, num_layers=2, dropout=0.3)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    torch.manual_seed(1)
    a = ref(x)[0]
    torch.manual_seed(1)
    b = ours(x)[0]
    assert torch.equal(a, b)  # the same code path, the same dropout draws
    assert "aten" in fusedrnn.explain(ours, x)
    with pytest.raises(fusedrnn.BackendError, match="aten"):
        fusedrnn.LSTM(3, 4, recurrent_dropout=0.2, backend="aten")(x)
    with pytest.raises(fusedrnn.BackendError, match="aten"):
        fusedrnn.ops.lstm_layer(x, torch.zeros(2, 4), torch.zeros(2, 4), ref.weight_ih_l0, ref.weight_hh_l0,
                                backend="aten")
