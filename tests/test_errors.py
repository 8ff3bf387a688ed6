"""Bad input: every bad argument raises a clear exception naming the argument and what was
expected (torch's exception class and message where nn.LSTM / nn.LSTMCell raise one), never
a crash, a hang or a silently wrong result.

One table (BAD) for the modules, their options, the cell and the ops, run on every CPU
backend; the constructor and forward errors compared with torch's own module's.
"""

from __future__ import annotations

import dataclasses
import faulthandler
from typing import Callable, Optional

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from fusedrnn import ops
from helpers import CPU_BACKENDS

I, H = 3, 4
NAN = float("nan")


# ---- the table of bad inputs ------------------------------------------------------------------


@dataclasses.dataclass
class Bad:
    """One bad input: ``call(backend)`` must raise ``exc`` with a message matching ``match``
    (which names the argument and what was expected).  ``torch_call()``, when given, feeds
    the same input to torch.nn.LSTM / LSTMCell: ours must raise torch's exception class."""

    id: str
    call: Callable[[str], object]
    exc: type
    match: str
    torch_call: Optional[Callable[[], object]] = None
    per_backend: bool = True  # run once per CPU backend (else once)


def _x(T=5, B=2, dtype=torch.float32):
    return torch.randn(T, B, I, dtype=dtype)


def _hx(L=1, B=2, Hh=H, Hc=H, dtype=torch.float32, device="cpu"):
    return (torch.zeros(L, B, Hh, dtype=dtype, device=device), torch.zeros(L, B, Hc, dtype=dtype, device=device))


def _lstm(backend, **kw):
    return fusedrnn.LSTM(I, H, backend=backend, **kw)


def _cell(backend, **kw):
    return fusedrnn.LSTMCell(I, H, backend=backend, **kw)


def _packed(data, batch_sizes):
    return PackedSequence(data, torch.tensor(batch_sizes, dtype=torch.int64))


def _layer_args(T=5, B=2):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(x=r(T, B, I), h0=r(B, H), c0=r(B, H), w_ih=r(4 * H, I), w_hh=r(4 * H, H))


def _layer(backend, **over):
    a = dict(_layer_args(), **over)
    kw = {k: a.pop(k) for k in ("mask", "lengths") if k in a}
    return ops.lstm_layer(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], backend=backend, **kw)


BAD = [
    # -- input: rank, size, dtype, type --
    Bad("input-4d", lambda b: _lstm(b)(_x().unsqueeze(0)), ValueError, r"input to be 2D or 3D, got 4D",
        lambda: nn.LSTM(I, H)(_x().unsqueeze(0))),
    Bad("input-1d", lambda b: _lstm(b)(torch.randn(I)), ValueError, r"input to be 2D or 3D, got 1D",
        lambda: nn.LSTM(I, H)(torch.randn(I))),
    Bad("input-size", lambda b: _lstm(b)(torch.randn(5, 2, I + 1)), RuntimeError,
        r"input.size\(-1\) must be equal to input_size. Expected 3, got 4",
        lambda: nn.LSTM(I, H)(torch.randn(5, 2, I + 1))),
    Bad("input-int64", lambda b: _lstm(b)(_x().long()), ValueError, r"input dtype \(torch.int64\) does not match weight dtype",
        lambda: nn.LSTM(I, H)(_x().long())),
    Bad("input-float64-vs-float32-weights", lambda b: _lstm(b)(_x(dtype=torch.float64)), ValueError,
        r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)",
        lambda: nn.LSTM(I, H)(_x(dtype=torch.float64))),
    Bad("input-not-a-tensor", lambda b: _lstm(b)(_x().tolist()), TypeError, r"input must be a Tensor or a PackedSequence, got list"),
    Bad("input-empty-sequence", lambda b: _lstm(b)(torch.randn(0, 2, I)), RuntimeError,
        r"sequence length to be larger than 0", lambda: nn.LSTM(I, H)(torch.randn(0, 2, I))),
    Bad("input-empty-sequence-unbatched", lambda b: _lstm(b)(torch.randn(0, I)), RuntimeError,
        r"sequence length to be larger than 0", lambda: nn.LSTM(I, H)(torch.randn(0, I))),
    Bad("input-device", lambda b: _lstm(b)(_x().to("meta")), RuntimeError,
        r"found input tensor at meta and parameter tensor at cpu", lambda: nn.LSTM(I, H)(_x().to("meta"))),
    # -- h0 / c0: rank, sizes, dtype, device, count --
    Bad("h0-batch", lambda b: _lstm(b)(_x(), _hx(B=3)), RuntimeError, r"Expected hidden\[0\] size \(1, 2, 4\), got \[1, 3, 4\]",
        lambda: nn.LSTM(I, H)(_x(), _hx(B=3))),
    Bad("c0-hidden", lambda b: _lstm(b)(_x(), _hx(Hc=H + 1)), RuntimeError, r"Expected hidden\[1\] size \(1, 2, 4\), got \[1, 2, 5\]",
        lambda: nn.LSTM(I, H)(_x(), _hx(Hc=H + 1))),
    Bad("h0-layers", lambda b: _lstm(b)(_x(), _hx(L=2)), RuntimeError, r"Expected hidden\[0\] size \(1, 2, 4\), got \[2, 2, 4\]",
        lambda: nn.LSTM(I, H)(_x(), _hx(L=2))),
    Bad("hx-2d-for-batched", lambda b: _lstm(b)(_x(), tuple(h[0] for h in _hx())), RuntimeError,
        r"batched 3-D input, hx and cx should also be 3-D", lambda: nn.LSTM(I, H)(_x(), tuple(h[0] for h in _hx()))),
    Bad("hx-3d-for-unbatched", lambda b: _lstm(b)(_x()[:, 0], _hx()), RuntimeError,
        r"unbatched 2-D input, hx and cx should also be 2-D", lambda: nn.LSTM(I, H)(_x()[:, 0], _hx())),
    Bad("h0-float64", lambda b: _lstm(b)(_x(), (_hx()[0].double(), _hx()[1])), RuntimeError,
        r"hx\[0\] \(h_0\) must have the dtype of the input \(torch.float32\), got torch.float64",
        lambda: nn.LSTM(I, H)(_x(), (_hx()[0].double(), _hx()[1]))),
    Bad("c0-int64", lambda b: _lstm(b)(_x(), (_hx()[0], _hx()[1].long())), RuntimeError,
        r"hx\[1\] \(c_0\) must have the dtype of the input \(torch.float32\), got torch.int64",
        lambda: nn.LSTM(I, H)(_x(), (_hx()[0], _hx()[1].long()))),
    Bad("h0-device", lambda b: _lstm(b)(_x(), (_hx(device="meta")[0], _hx()[1])), RuntimeError,
        r"found input tensor at cpu and hidden tensor at meta", lambda: nn.LSTM(I, H)(_x(), (_hx(device="meta")[0], _hx()[1]))),
    Bad("hx-three-states", lambda b: _lstm(b)(_x(), _hx() + (_hx()[0],)), RuntimeError, r"lstm expects two hidden states",
        lambda: nn.LSTM(I, H)(_x(), _hx() + (_hx()[0],))),
    # -- PackedSequence --
    Bad("packed-length-zero", lambda b: _lstm(b)(_packed(torch.randn(2, I), [2, 0])), RuntimeError,
        r"batch_sizes must be positive \(every sequence has length >= 1\), got \[2, 0\]"),
    Bad("pack_padded-length-zero", lambda b: _lstm(b)(pack_padded_sequence(_x(), torch.tensor([5, 0]))), RuntimeError,
        r"'lengths'", lambda: nn.LSTM(I, H)(pack_padded_sequence(_x(), torch.tensor([5, 0])))),
    Bad("packed-increasing", lambda b: _lstm(b)(_packed(torch.randn(3, I), [1, 2])), RuntimeError,
        r"batch_sizes must be non-increasing", lambda: nn.LSTM(I, H)(_packed(torch.randn(3, I), [1, 2]))),
    Bad("packed-sum", lambda b: _lstm(b)(_packed(torch.randn(5, I), [2, 2])), RuntimeError,
        r"batch_sizes sum to 4 but data has 5 rows", lambda: nn.LSTM(I, H)(_packed(torch.randn(5, I), [2, 2]))),
    Bad("packed-empty", lambda b: _lstm(b)(_packed(torch.randn(0, I), [])), RuntimeError, r"sequence length to be larger than 0"),
    Bad("packed-input-size", lambda b: _lstm(b)(_packed(torch.randn(4, I + 2), [2, 2])), RuntimeError,
        r"input.size\(-1\) must be equal to input_size. Expected 3, got 5"),
    # -- regularizer options out of range --
    Bad("recurrent_dropout=1", lambda b: _lstm(b, recurrent_dropout=1.0), ValueError, r"recurrent_dropout .*\[0, 1\).*got 1.0"),
    Bad("recurrent_dropout<0", lambda b: _lstm(b, recurrent_dropout=-0.1), ValueError, r"recurrent_dropout .*\[0, 1\).*got -0.1"),
    Bad("recurrent_dropout=nan", lambda b: _lstm(b, recurrent_dropout=NAN), ValueError, r"recurrent_dropout .*\[0, 1\).*got nan"),
    Bad("cell-recurrent_dropout=1", lambda b: _cell(b, recurrent_dropout=1.0), ValueError, r"recurrent_dropout .*\[0, 1\)"),
    Bad("recurrent_dropout-str", lambda b: _lstm(b, recurrent_dropout="0.1"), ValueError, r"recurrent_dropout .*got '0.1'"),
    Bad("variational-int", lambda b: _cell(b, variational=1), TypeError, r"variational should be of type bool, got: int"),
    Bad("batch_norm-str", lambda b: _lstm(b, batch_norm="yes"), TypeError, r"batch_norm should be of type bool, got: str"),
    Bad("layer_norm-int", lambda b: _lstm(b, layer_norm=1), TypeError, r"layer_norm should be of type bool, got: int"),
    Bad("layer_norm-with-batch_norm", lambda b: _cell(b, layer_norm=True, batch_norm=True), ValueError,
        r"layer_norm=True and batch_norm=True cannot be combined"),
    Bad("zoneout=1", lambda b: _lstm(b, zoneout=1.0), ValueError, r"zoneout should be a number in range \[0, 1\)"),
    Bad("zoneout-triple", lambda b: _cell(b, zoneout=(0.1, 0.1, 0.1)), ValueError, r"zoneout .*\(cell, hidden\) pair"),
    Bad("weight_dropout=1", lambda b: _lstm(b, weight_dropout=1.0), ValueError, r"weight_dropout should be a number in range"),
    Bad("bn_max_steps=2.5", lambda b: _lstm(b, batch_norm=True, bn_max_steps=2.5), ValueError, r"bn_max_steps .*>= 1, got 2.5"),
    Bad("option-unknown-cell", lambda b: fusedrnn.LSTMCell(I, H, recurent_dropout=0.1), TypeError,
        r"unexpected keyword argument 'recurent_dropout'", per_backend=False),
    Bad("bn_max_steps=0", lambda b: _lstm(b, batch_norm=True, bn_max_steps=0), ValueError, r"bn_max_steps .*>= 1, got 0"),
    Bad("bn_max_steps=-3", lambda b: _cell(b, batch_norm=True, bn_max_steps=-3), ValueError, r"bn_max_steps .*>= 1, got -3"),
    Bad("bn_momentum>1", lambda b: _lstm(b, batch_norm=True, bn_momentum=1.5), ValueError, r"bn_momentum .*\[0, 1\], got 1.5"),
    Bad("bn_momentum<0", lambda b: _lstm(b, batch_norm=True, bn_momentum=-0.01), ValueError, r"bn_momentum .*\[0, 1\], got -0.01"),
    Bad("bn_momentum=nan", lambda b: _lstm(b, batch_norm=True, bn_momentum=NAN), ValueError, r"bn_momentum .*\[0, 1\], got nan"),
    Bad("bn_eps=0", lambda b: _lstm(b, batch_norm=True, bn_eps=0.0), ValueError, r"bn_eps .*> 0, got 0.0"),
    Bad("bn_eps<0", lambda b: _cell(b, batch_norm=True, bn_eps=-1e-5), ValueError, r"bn_eps .*> 0, got -1e-05"),
    # -- batch norm in training with one sequence --
    Bad("batch_norm-train-batch-1", lambda b: _lstm(b, batch_norm=True)(_x(B=1)), ValueError,
        r"batch_norm in training needs more than one sequence.*batch size 1"),
    Bad("batch_norm-train-unbatched", lambda b: _lstm(b, batch_norm=True)(_x()[:, 0]), ValueError,
        r"batch_norm in training needs more than one sequence.*batch size 1"),
    Bad("batch_norm-train-cell-batch-1", lambda b: _cell(b, batch_norm=True)(torch.randn(1, I)), ValueError,
        r"batch_norm in training needs more than one sequence.*batch size 1"),
    # -- backends: unknown, unavailable on this device, unavailable for this configuration --
    Bad("backend-unknown", lambda b: _lstm("cudnn"), ValueError, r"backend must be one of .*got 'cudnn'", per_backend=False),
    Bad("backend-unknown-cell", lambda b: _cell("fast"), ValueError, r"backend must be one of .*got 'fast'", per_backend=False),
    Bad("backend-cuda-on-cpu", lambda b: _lstm("cuda", recurrent_dropout=0.2)(_x()), fusedrnn.BackendError,
        r"backend='cuda' cannot run.*runs on cuda tensors, got cpu", per_backend=False),
    Bad("backend-native-float16", lambda b: fusedrnn.LSTM(I, H, backend="native", dtype=torch.float16)(_x().half()),
        fusedrnn.BackendError, r"native CPU kernel takes float32 or float64, got torch.float16", per_backend=False),
    Bad("backend-triton-bfloat16-on-cpu",
        lambda b: fusedrnn.LSTM(I, H, backend="triton", dtype=torch.bfloat16)(_x().bfloat16()),
        fusedrnn.BackendError, r"triton", per_backend=False),
    Bad("backend-aten-regularized", lambda b: _lstm("aten", recurrent_dropout=0.2)(_x()), fusedrnn.BackendError,
        r"backend='aten' .*cannot run recurrent dropout", per_backend=False),
    # -- the cell --
    Bad("cell-mask-shape", lambda b: _cell(b)(torch.randn(2, I), mask=torch.ones(2, H + 1)), ValueError,
        r"mask must have shape \(2, 4\), got \(2, 5\)"),
    Bad("cell-step-negative", lambda b: _cell(b, batch_norm=True).eval()(torch.randn(2, I), step=-1), ValueError,
        r"step must be an integer >= 0"),
    Bad("cell-one-state", lambda b: _cell(b)(torch.randn(2, I), (torch.zeros(2, H),)), RuntimeError,
        r"lstm_cell expects two hidden states", lambda: nn.LSTMCell(I, H)(torch.randn(2, I), (torch.zeros(2, H),))),
    Bad("cell-hx-float64", lambda b: _cell(b)(torch.randn(2, I), (torch.zeros(2, H, dtype=torch.float64), torch.zeros(2, H))),
        RuntimeError, r"hx\[0\] \(h_0\) must have the dtype of the input",
        lambda: nn.LSTMCell(I, H)(torch.randn(2, I), (torch.zeros(2, H, dtype=torch.float64), torch.zeros(2, H)))),
    Bad("cell-hx-device", lambda b: _cell(b)(torch.randn(2, I), (torch.zeros(2, H, device="meta"), torch.zeros(2, H))),
        RuntimeError, r"found input tensor at cpu and hidden tensor at meta",
        lambda: nn.LSTMCell(I, H)(torch.randn(2, I), (torch.zeros(2, H, device="meta"), torch.zeros(2, H)))),
    Bad("cell-input-size", lambda b: _cell(b)(torch.randn(2, I + 1)), RuntimeError,
        r"input has inconsistent input_size: got 4 expected 3", lambda: nn.LSTMCell(I, H)(torch.randn(2, I + 1))),
    # -- the layer op --
    Bad("op-lengths-above-T", lambda b: _layer(b, lengths=torch.tensor([6, 2])), ValueError, r"lengths must lie in \[0, T = 5\]"),
    Bad("op-lengths-int32", lambda b: _layer(b, lengths=torch.tensor([5, 2], dtype=torch.int32)), ValueError,
        r"lengths must be an int64 tensor of shape \[B\] = \[2\]"),
    Bad("op-mask-shape", lambda b: _layer(b, mask=torch.ones(3, 2, H)), ValueError,
        r"mask must be \[B, R\] = \[2, 4\] \(shared\) or \[T, B, R\] = \[5, 2, 4\]"),
    Bad("op-mask-dtype", lambda b: _layer(b, mask=torch.ones(2, H, dtype=torch.float64)), TypeError,
        r"mask must have the dtype of xp \(torch.float32\)"),
    Bad("op-h0-shape", lambda b: _layer(b, h0=torch.zeros(3, H)), ValueError, r"h0 must be \[B, R\] = \[2, 4\], got shape \(3, 4\)"),
    Bad("op-c0-device", lambda b: _layer(b, c0=torch.zeros(2, H, device="meta")), RuntimeError,
        r"c0 must be on the device of xp \(cpu\), got meta"),
    Bad("op-weight_ih-shape", lambda b: _layer(b, w_ih=torch.zeros(4 * H, I + 1)), ValueError,
        r"weight_ih must be \[4H, I\] with I = 3"),
    Bad("op-recurrence-xp-2d", lambda b: ops.lstm_recurrence(torch.zeros(5, 4 * H), torch.zeros(1, H), torch.zeros(1, H),
                                                            torch.zeros(4 * H, H), backend=b),
        ValueError, r"xp must be \[T, B, 4H\] \(3-D\), got shape \(5, 16\)"),
]

_ROWS = [(row, b) for row in BAD for b in (CPU_BACKENDS if row.per_backend else ["-"])]


@pytest.mark.parametrize("row,backend", _ROWS, ids=[f"{r.id}-{b}" for r, b in _ROWS])
def test_bad_input(row, backend):
    """The exception class (torch's, where torch raises) and a message naming the argument
    and what was expected; a hang would be killed by the watchdog."""
    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails the run loudly
    try:
        torch.manual_seed(0)
        with pytest.raises(row.exc, match=row.match):
            row.call(backend)
        if row.torch_call is not None:
            with pytest.raises(Exception) as theirs:
                row.torch_call()
            assert issubclass(row.exc, type(theirs.value)) or issubclass(type(theirs.value), row.exc), (
                f"torch raises {type(theirs.value).__name__}, we raise {row.exc.__name__}")
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_env_backend_overrides_auto_and_is_checked(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_BACKEND", "reference")
    lstm = fusedrnn.LSTM(I, H)
    assert "reference" in fusedrnn.explain(lstm, _x())
    monkeypatch.setenv("FUSEDRNN_BACKEND", "nope")
    with pytest.raises(ValueError, match="FUSEDRNN_BACKEND: backend must be one of"):
        fusedrnn.LSTM(I, H, recurrent_dropout=0.1)(_x())


def test_batch_norm_with_one_sequence_runs_in_eval():
    """Batch norm in eval mode uses the running statistics: one sequence is fine there."""
    fusedrnn.LSTM(I, H, batch_norm=True).eval()(_x(B=1))
    fusedrnn.LSTMCell(I, H, batch_norm=True).eval()(torch.randn(1, I))


# ---- as torch.nn.LSTM / LSTMCell ---------------------------------------------------------------


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


def test_auto_runs_plain_cpu_modules_as_torch_and_aten_refuses_regularizers():
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, num_layers=2, dropout=0.3)
    ours = fusedrnn.LSTM(3, 4, num_layers=2, dropout=0.3)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    with torch.no_grad():  # inference (training with gradients runs native at this size: test_cpu_rules)
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
