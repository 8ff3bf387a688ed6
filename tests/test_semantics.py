"""Module-level semantics against independent oracles, on every fused backend, and which
path runs for each class of configuration.

- between-layer ``dropout`` against nn.LSTM under the same seed (between layers only);
- the variational between-layer mask: one [B, F] mask, constant over time;
- running statistics when a step has exactly one active row (tests/direct.py);
- an explicit LSTMCell mask, honoured in train and eval;
- eval mode: regularizers off, and the fused layer op provably called;
- the path each configuration class takes (torch's own module or the fused ops);
- the fallbacks: the reference backend with no compiled code at all (its Python BN_x), the
  Triton persistent kernels with several row and column blocks (interpreter, programs as
  threads: tests/interp_grid.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import ops
from direct import direct_layer
from helpers import TRITON, assert_close, grads

T, B, I, H = 6, 5, 4, 5
FUSED = fusedrnn.available_backends("cpu") + (["triton"] if TRITON else [])
TORCH_LSTM, TORCH_CELL = torch.nn.modules.rnn.LSTM, torch.nn.modules.rnn.LSTMCell


class Recorder:
    """Records every call of ops.lstm_layer (the fused layer op) with its arguments."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = ops.lstm_layer

        def record(x, *args, **kwargs):
            out = real(x, *args, **kwargs)
            self.calls.append(dict(x=x.detach().clone(), y=out[0].detach().clone(), **kwargs))
            return out

        monkeypatch.setattr(ops, "lstm_layer", record)


# ---- between-layer dropout ------------------------------------------------------------------


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_between_layer_dropout_matches_nn_lstm(backend, bidirectional):
    """Training-mode ``dropout`` is nn.LSTM's: a fresh mask per element on each layer's
    output except the last, drawn from the same generator in the same order, so the same
    seed gives the same outputs and gradients."""
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=3, dropout=0.4, bidirectional=bidirectional, dtype=torch.float64)
    ours = fusedrnn.LSTM(I, H, num_layers=3, dropout=0.4, bidirectional=bidirectional, dtype=torch.float64,
                         backend=backend)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    y_r, (h_r, c_r) = ref(x)
    torch.manual_seed(7)
    y_o, (h_o, c_o) = ours(x)
    for a, b, n in ((y_o, y_r, "y"), (h_o, h_r, "h_n"), (c_o, c_r, "c_n")):
        assert_close(a, b, msg=n)
    w = [x] + list(ref.parameters())
    g_r = grads((y_r * y_r).sum() + h_r.sum() + c_r.sum(), w)
    g_o = grads((y_o * y_o).sum() + h_o.sum() + c_o.sum(), [x] + list(ours.parameters()))
    for a, b in zip(g_o, g_r):
        assert_close(a, b)


@pytest.mark.parametrize("backend", FUSED)
def test_no_dropout_after_the_last_layer(backend, monkeypatch):
    rec = Recorder(monkeypatch)
    lstm = fusedrnn.LSTM(I, H, num_layers=2, dropout=0.6, backend=backend, dtype=torch.float64)
    y = lstm(torch.randn(T, B, I, dtype=torch.float64))[0]
    assert torch.equal(y, rec.calls[-1]["y"])  # the last layer's output, untouched


@pytest.mark.parametrize("backend", FUSED + ["auto"])
def test_variational_between_layer_mask_is_constant_over_time(backend, monkeypatch):
    """With variational=True, layer k + 1 reads layer k's output times one [B, F] mask,
    the same at every step, of values 0 and 1 / (1 - p); "auto" must run the fused path
    (torch's LSTM would draw per-element masks)."""
    p = 0.5
    rec = Recorder(monkeypatch)
    lstm = fusedrnn.LSTM(I, H, num_layers=2, dropout=p, variational=True, backend=backend, dtype=torch.float64)
    lstm(torch.randn(T, B, I, dtype=torch.float64))
    assert len(rec.calls) == 2, "the fused layer op was not called for every layer"
    y0, x1 = rec.calls[0]["y"], rec.calls[1]["x"]
    assert (y0 != 0).all()
    ratio = x1 / y0  # [T, B, H]
    assert torch.allclose(ratio, ratio[:1].expand_as(ratio), rtol=0, atol=1e-12)
    vals = set(torch.round(ratio[0] * 1e6).unique().tolist())
    assert vals <= {0.0, round(1e6 / (1 - p))} and len(vals) == 2


# ---- batch-norm running statistics with a single active row ------------------------------


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reverse", [False, True])
def test_running_stats_with_one_active_row(backend, reverse):
    """Steps with exactly one running row normalise to the bias and leave their running-
    statistics slot alone (no unbiased variance from one row); the others follow
    tests/direct.py.  lengths [6, 2, 1, 1, 3]: steps 3-5 have one row."""
    g = torch.Generator().manual_seed(3)
    dt = torch.float64
    x = torch.randn(T, B, I, generator=g, dtype=dt, requires_grad=True)
    z = torch.zeros(B, H, dtype=dt)
    w_ih = (0.5 * torch.randn(4 * H, I, generator=g, dtype=dt)).requires_grad_()
    w_hh = (0.5 * torch.randn(4 * H, H, generator=g, dtype=dt)).requires_grad_()
    lengths = torch.tensor([6, 2, 1, 1, 3])
    S = T

    def bn_dict():
        r = lambda *s: torch.rand(*s, generator=torch.Generator().manual_seed(9), dtype=dt)  # noqa: E731
        return dict(gamma_x=(0.5 + r(4 * H)).requires_grad_(), gamma_h=(0.5 + r(4 * H)).requires_grad_(),
                    gamma_c=(0.5 + r(H)).requires_grad_(), beta_c=(r(H) - 0.5).requires_grad_(),
                    rm_x=torch.zeros(S, 4 * H, dtype=dt), rv_x=torch.ones(S, 4 * H, dtype=dt),
                    rm_h=torch.zeros(S, 4 * H, dtype=dt), rv_h=torch.ones(S, 4 * H, dtype=dt),
                    rm_c=torch.zeros(S, H, dtype=dt), rv_c=torch.ones(S, H, dtype=dt),
                    training=True, momentum=0.3, eps=1e-5)

    d, f = bn_dict(), bn_dict()
    y_d, h_d, c_d = direct_layer(x, z, z, w_ih, w_hh, lengths=lengths, reverse=reverse, bn=d)
    bn = ops.RecurrentBN(weight_x=f["gamma_x"], weight_h=f["gamma_h"], weight_c=f["gamma_c"], bias_c=f["beta_c"],
                         running_mean_x=f["rm_x"], running_var_x=f["rv_x"], running_mean_h=f["rm_h"],
                         running_var_h=f["rv_h"], running_mean_c=f["rm_c"], running_var_c=f["rv_c"],
                         training=True, momentum=0.3, eps=1e-5)
    y_f, h_f, c_f = ops.lstm_layer(x, z, z, w_ih, w_hh, lengths=lengths, reverse=reverse, norm=bn, backend=backend)
    for a, b, n in ((y_f, y_d, "y"), (h_f, h_d, "h_n"), (c_f, c_d, "c_n")):
        assert_close(a, b, msg=n)
    for k in ("rm_x", "rv_x", "rm_h", "rv_h", "rm_c", "rv_c"):
        assert_close(f[k], d[k], msg=k)
        assert torch.equal(f[k][3:], torch.zeros_like(f[k][3:]) if k.startswith("rm") else torch.ones_like(f[k][3:]))
    leaves = [x, w_ih, w_hh]
    g_d = grads((y_d * y_d).sum() + h_d.sum(), leaves + [d[k] for k in ("gamma_x", "gamma_h", "gamma_c", "beta_c")])
    g_f = grads((y_f * y_f).sum() + h_f.sum(), leaves + [f[k] for k in ("gamma_x", "gamma_h", "gamma_c", "beta_c")])
    for a, b in zip(g_f, g_d):
        assert_close(a, b)


def test_update_running_stats_skips_single_row_steps():
    rm, rv = torch.zeros(4, 2), torch.ones(4, 2)
    mean = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    var = torch.tensor([[0.5, 0.5], [0.0, 0.0], [2.0, 2.0]])
    ops.update_running_stats(rm, rv, mean, var, torch.tensor([3, 1, 2]), 1, 0.5)
    assert torch.equal(rm[0], torch.zeros(2)) and torch.equal(rv[0], torch.ones(2))  # before the offset
    assert torch.allclose(rm[1], torch.tensor([0.5, 1.0])) and torch.allclose(rv[1], torch.tensor([0.875, 0.875]))
    assert torch.equal(rm[2], torch.zeros(2)) and torch.equal(rv[2], torch.ones(2))  # one row: no update
    assert torch.allclose(rm[3], torch.tensor([2.5, 3.0])) and torch.allclose(rv[3], torch.tensor([2.5, 2.5]))



def test_update_running_stats_uniform_counts_match_per_step_counts():
    """The int form (no lengths: every step has B rows) is the masked form with B at every step."""
    g = torch.Generator().manual_seed(0)
    mean, var = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.rand(5, 3, generator=g, dtype=torch.float64)
    for B in (4, 1):
        want_m, want_v = torch.zeros(6, 3, dtype=torch.float64), torch.ones(6, 3, dtype=torch.float64)
        got_m, got_v = want_m.clone(), want_v.clone()
        ops.update_running_stats(want_m, want_v, mean, var, torch.full((5,), B), 2, 0.3)
        ops.update_running_stats(got_m, got_v, mean, var, B, 2, 0.3)
        assert torch.allclose(got_m, want_m, rtol=1e-12, atol=0) and torch.allclose(got_v, want_v, rtol=1e-12, atol=0)
    assert torch.equal(got_v, torch.ones(6, 3, dtype=torch.float64))  # B = 1: no update

# ---- the explicit LSTMCell mask ---------------------------------------------------------------


@pytest.mark.parametrize("backend", fusedrnn.available_backends("cpu") + ["auto"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_explicit_cell_mask_is_honoured(backend, training):
    torch.manual_seed(0)
    cell = fusedrnn.LSTMCell(I, H, backend=backend, dtype=torch.float64).train(training)
    x, h, c = (torch.randn(B, n, dtype=torch.float64) for n in (I, H, H))
    m = (torch.rand(B, H, dtype=torch.float64) > 0.4).to(torch.float64) / 0.6
    hy, cy = cell(x, (h, c), mask=m)
    want_h, want_c = TORCH_CELL.forward(cell, x, (h * m, c))  # the oracle: torch's cell on h * m
    assert_close(hy, want_h)
    assert_close(cy, want_c)
    assert not torch.allclose(hy, TORCH_CELL.forward(cell, x, (h, c))[0])


# ---- eval mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FUSED)
def test_eval_mode_regularizers_are_off_on_the_fused_op(backend, monkeypatch):
    """In eval mode recurrent dropout, variational masks and between-layer dropout are
    identities: the fused layer op is called for every layer and direction, with no mask,
    and the result is nn.LSTM's."""
    rec = Recorder(monkeypatch)
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=2, dropout=0.5, bidirectional=True, dtype=torch.float64).eval()
    ours = fusedrnn.LSTM(I, H, num_layers=2, dropout=0.5, bidirectional=True, recurrent_dropout=0.5,
                         variational=True, backend=backend, dtype=torch.float64).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    y = ours(x)[0]
    assert len(rec.calls) == 4 and all(c["mask"] is None for c in rec.calls)
    assert_close(y, ref(x)[0])


# ---- which path runs ---------------------------------------------------------------------------

# (options, training, autocast, expected path) for a fusedrnn.LSTM on the CPU, backend "auto"
LSTM_PATHS = [
    (dict(), True, False, "native"),  # float32 training at B <= 128: measured faster (decision.py)
    (dict(), False, False, "aten"),
    (dict(dropout=0.3), True, False, "native"),  # per-element between-layer dropout, as torch's
    (dict(dropout=0.3), False, False, "aten"),
    (dict(dropout=0.3, variational=True), True, False, "native"),  # a per-sequence mask
    (dict(dropout=0.3, variational=True), False, False, "aten"),
    (dict(recurrent_dropout=0.2), True, False, "native"),
    (dict(recurrent_dropout=0.2), False, False, "aten"),
    (dict(recurrent_dropout=0.2, variational=True), True, False, "native"),
    (dict(batch_norm=True), True, False, "native"),
    (dict(batch_norm=True), False, False, "native"),  # running statistics
    (dict(), True, True, "native"),  # autocast: the fused path keeps c in float32
]


@pytest.mark.parametrize("options,training,autocast,path", LSTM_PATHS,
                         ids=[f"{o}-{'train' if t else 'eval'}{'-autocast' if a else ''}"
                              for o, t, a, _ in LSTM_PATHS])
def test_which_path_runs_lstm(options, training, autocast, path, monkeypatch):
    rec = Recorder(monkeypatch)
    lstm = fusedrnn.LSTM(I, H, num_layers=2, **options).train(training)
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        report = fusedrnn.explain(lstm, x)
        lstm(x)
    if path == "aten":
        assert "all layers: aten" in report and not rec.calls
    else:
        assert f"layer_l0: {path}" in report and len(rec.calls) == 2


# (options, training, explicit mask, fused path expected) for a fusedrnn.LSTMCell, auto, CPU
CELL_PATHS = [
    (dict(), True, False, False),
    (dict(), True, True, True),
    (dict(), False, True, True),
    (dict(recurrent_dropout=0.2), True, False, True),
    (dict(recurrent_dropout=0.2), False, False, False),
    (dict(batch_norm=True), False, False, True),
]


@pytest.mark.parametrize("options,training,with_mask,fused", CELL_PATHS)
def test_which_path_runs_cell(options, training, with_mask, fused, monkeypatch):
    calls = []
    real = ops.lstm_cell
    monkeypatch.setattr(ops, "lstm_cell", lambda *a, **k: calls.append(1) or real(*a, **k))
    cell = fusedrnn.LSTMCell(I, H, **options).train(training)
    cell(torch.randn(B, I), None, mask=torch.ones(B, H) if with_mask else None)
    assert bool(calls) == fused


# ---- fallbacks -----------------------------------------------------------------------------------


def regularized_lstm_run(training: bool, backend: str) -> list:
    """Outputs, gradients and running statistics of a regularized LSTM step (batch norm,
    recurrent dropout, packed, both directions) on a backend."""
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 6, 4, 3, 2])
    torch.manual_seed(1)
    m = fusedrnn.LSTM(4, 5, bidirectional=True, batch_norm=True, recurrent_dropout=0.3, dtype=torch.float64,
                      backend=backend)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.train(training)
    torch.manual_seed(2)
    y, (h, c) = m(pack_padded_sequence(x, lengths))
    g = torch.autograd.grad((y.data ** 2).sum() + h.sum(), [x] + list(m.parameters()))
    return [t.detach() for t in [y.data, h, c, *g, *m.buffers()]]


_NO_COMPILED = r"""
import json, sys
sys.modules["fusedrnn._C"] = None  # the compiled library cannot be imported
sys.path.insert(0, "tests")
import torch, fusedrnn
from fusedrnn.backends import compiled
from test_semantics import regularized_lstm_run
assert compiled.LOAD_ERROR is not None and fusedrnn.available_backends("cpu") == ["reference"]
assert not hasattr(torch.ops.fusedrnn, "lstm_layer_forward")
print(json.dumps({str(t): [v.flatten().tolist() for v in regularized_lstm_run(t, "auto")] for t in (True, False)}))
"""


def test_reference_backend_runs_without_compiled_code():
    """With fusedrnn._C unavailable (a fresh process), the reference backend runs a whole
    regularized LSTM (batch norm with its Python BN_x, recurrent dropout, packed, both
    directions, train and eval) and gives the native kernels' results: outputs, gradients
    and running statistics."""
    from helpers import run_python_json

    got = run_python_json(_NO_COMPILED)
    for training in (True, False):
        want = regularized_lstm_run(training, "native")
        assert len(want) == len(got[str(training)])
        for a, b in zip(got[str(training)], want):
            assert_close(torch.tensor(a, dtype=torch.float64), b.flatten())


@pytest.mark.skipif(not TRITON, reason="triton interpreter not available")
@pytest.mark.parametrize("case", [
    dict(mask="per_step", lengths=True, reverse=True, B=40, H=40, design="persistent-stream",
         dtype=torch.float64, nprog=6),
    dict(mask="shared", P=24, B=40, H=40, design="persistent-stream", dtype=torch.float64, nprog=6),
    dict(bn="train", lengths=True, B=24, H=40, design="persistent", dtype=torch.float64, nprog=3),
    dict(mask="shared", reverse=True, B=40, H=20, design="persistent-resident", dtype=torch.float32, nprog=4),
], ids=["len-rev", "proj", "bn-len", "resident-fp32"])
def test_triton_persistent_with_several_row_and_column_blocks(case, monkeypatch):
    """The persistent kernels on the plan a GPU gets (B=40, H=40: two row blocks of 32 and
    three column blocks of 16, partial last blocks; batch norm: one block of all rows;
    W resident in fp32 at H=20),
    their programs run concurrently as threads in the interpreter so that the grid barrier
    works: the block mapping, the exchange of h through global memory and the barriers,
    forward and backward, against the reference."""
    from interp_grid import gpu_sized_tilings, threaded_programs
    from test_triton import TH, check_against_reference, make_case

    case = dict(case)
    design, batch, hidden, dtype, nprog = (case.pop(k) for k in ("design", "B", "H", "dtype", "nprog"))
    args, leaves = make_case(case.get("mask"), case.get("bn"), case.get("P", 0), case.get("lengths", False),
                             case.get("reverse", False), T=4, B=batch, H=hidden, dtype=dtype)
    gpu_sized_tilings(monkeypatch)
    with TH.forced_design(design):
        plan = TH.tilings_for(torch.device("cpu"), TH.shape_of(batch, hidden, args[3].shape[1], bool(case.get("P")),
                                                               case.get("bn") is not None, dtype))[0]
    assert plan.design == "persistent" and plan.nprog == nprog, plan
    with threaded_programs():
        check_against_reference(args, leaves, design, tol=1e-9 if dtype == torch.float64 else 2e-5)
