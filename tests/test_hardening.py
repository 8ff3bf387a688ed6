"""Hardening: a table of bad inputs (each a clear exception naming the argument, never a
crash, a hang or a silently wrong result), inputs that are unusual but valid (NaN / Inf,
empty batch, non-contiguous / expanded / overlapping tensors, T = 100000), backward in eval
mode, autocast, and state_dict round trips.

Every CPU backend runs: native, reference, and triton through the interpreter (small shapes).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import io
import math
from typing import Callable, Optional

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from fusedrnn import ops
from helpers import assert_close, grads, run_python_json

CPU_BACKENDS = fusedrnn.available_backends("cpu")  # native, reference (+ triton when interpreted)
try:
    from fusedrnn.backends import triton as _triton_backend  # noqa: F401

    if fusedrnn.ops.decision.unavailable_reason("triton", torch.device("cpu")) is None:
        CPU_BACKENDS = CPU_BACKENDS + ["triton"]
except ImportError:  # pragma: no cover - triton not installed
    pass
I, H = 3, 4
NAN, INF = float("nan"), float("inf")


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


def test_the_table_is_large_enough():
    assert len(BAD) >= 30
    assert len({r.id for r in BAD}) == len(BAD)


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


def test_env_backend_unknown(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_BACKEND", "nope")
    with pytest.raises(ValueError, match="FUSEDRNN_BACKEND: backend must be one of"):
        fusedrnn.LSTM(I, H, recurrent_dropout=0.1)(_x())


# ---- NaN / Inf: propagate like nn.LSTM's -----------------------------------------------------------


def _pair(backend, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, dtype=dtype, **kw)
    ours = fusedrnn.LSTM(I, H, dtype=dtype, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _same_nonfinite(a, b, name):
    assert torch.equal(a.isnan(), b.isnan()), f"{name}: NaN pattern differs"
    assert torch.equal(a.isinf(), b.isinf()), f"{name}: Inf pattern differs"
    fin = torch.isfinite(b)
    assert torch.equal(a[a.isinf()], b[b.isinf()]), f"{name}: Inf signs differ"
    torch.testing.assert_close(a[fin], b[fin], rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (the Triton interpreter) on inf * 0
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("where,value", [("x", NAN), ("x", INF), ("x", -INF), ("h0", NAN), ("c0", INF)])
def test_nonfinite_inputs_propagate_like_nn_lstm(backend, where, value):
    ref, ours = _pair(backend, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, I, dtype=torch.float64)
    h0, c0 = torch.randn(4, 3, H, dtype=torch.float64), torch.randn(4, 3, H, dtype=torch.float64)
    {"x": x, "h0": h0, "c0": c0}[where][2 if where == "x" else 0, 1, 0] = value
    outs = []
    for m in (ref, ours):
        xx, hh, cc = (t.clone().requires_grad_() for t in (x, h0, c0))
        y, (h_n, c_n) = m(xx, (hh, cc))
        g = torch.autograd.grad((y * 1.5).sum() + h_n.sum() - c_n.sum(), [xx, hh, cc] + list(m.parameters()))
        outs.append([y, h_n, c_n, *g])
    names = ["y", "h_n", "c_n", "grad x", "grad h0", "grad c0"] + [f"grad {n}" for n, _ in ref.named_parameters()]
    for a, b, n in zip(outs[1], outs[0], names):
        _same_nonfinite(a, b, n)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_nonfinite_with_regularizers_matches_reference(backend):
    """With batch norm a NaN or an Inf reaches the batch statistics of its step (so every row
    from that step on); every backend propagates it exactly as the reference does, and
    nothing crashes."""
    kw = dict(num_layers=2, recurrent_dropout=0.3, variational=True, batch_norm=True, dtype=torch.float64)
    torch.manual_seed(0)
    ref = fusedrnn.LSTM(I, H, backend="reference", **kw)
    ours = fusedrnn.LSTM(I, H, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, I, dtype=torch.float64)
    x[3, 0, 1] = NAN
    x[1, 2, 0] = INF
    res = []
    for m in (ref, ours):
        torch.manual_seed(1)
        y, (h, c) = m(x)
        res.append((y, h, c))
    for a, b, n in zip(res[1], res[0], ("y", "h_n", "c_n")):
        _same_nonfinite(a, b, n)
    assert res[1][0][1:].isnan().all() and torch.isfinite(res[1][0][:1]).all()


def _cell_backend(backend):
    """Triton has no cell kernel (an unregularized step runs elsewhere): cells use native."""
    return "native" if backend == "triton" else backend


# ---- empty batch: as nn.LSTM --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, proj_size=2),
                                dict(recurrent_dropout=0.3, batch_norm=True)], ids=["plain", "L2-bd-proj", "v+bn"])
def test_empty_batch_as_nn_lstm(backend, kw):
    torch_kw = {k: v for k, v in kw.items() if k in ("num_layers", "bidirectional", "proj_size")}
    ref = nn.LSTM(I, H, **torch_kw)
    ours = fusedrnn.LSTM(I, H, backend=backend, **kw)
    for batch_first in (False, True):
        ref.batch_first = ours.batch_first = batch_first
        x = torch.randn(0, 5, I) if batch_first else torch.randn(5, 0, I)
        x.requires_grad_()
        y_r, (h_r, c_r) = ref(x)
        y, (h, c) = ours(x)
        assert (y.shape, h.shape, c.shape) == (y_r.shape, h_r.shape, c_r.shape)
        (y.sum() + h.sum() + c.sum()).backward()
        assert x.grad.shape == x.shape
    cell, ref_cell = fusedrnn.LSTMCell(I, H, backend=_cell_backend(backend)), nn.LSTMCell(I, H)
    assert cell(torch.randn(0, I))[0].shape == ref_cell(torch.randn(0, I))[0].shape == (0, H)


# ---- non-contiguous, expanded and overlapping tensors: correct results -----------------------------


def _views(T, B):
    """(name, make) pairs: make(base) returns a [T, B, I] view of a leaf ``base``."""
    return [
        ("transposed", lambda: torch.randn(B, T, I, dtype=torch.float64), lambda b: b.transpose(0, 1)),
        ("strided", lambda: torch.randn(T, B, 2 * I, dtype=torch.float64), lambda b: b[:, :, ::2]),
        ("expanded", lambda: torch.randn(T, 1, I, dtype=torch.float64), lambda b: b.expand(T, B, I)),
        ("overlapping", lambda: torch.randn(T + B + I, dtype=torch.float64),
         lambda b: b.as_strided((T, B, I), (1, 1, 1))),  # every element read many times
    ]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("view", range(4), ids=[v[0] for v in _views(1, 1)])
def test_unusual_layouts_give_correct_results(backend, view):
    T, B = 5, 3
    name, make_base, make_view = _views(T, B)[view]
    ref, ours = _pair(backend, num_layers=2, proj_size=2)
    base = make_base()
    h0_base = torch.randn(2, 1, 2, dtype=torch.float64)  # expanded over the batch
    c0_base = torch.randn(2, 1, H, dtype=torch.float64)
    res = []
    for m in (ref, ours):
        leaves = [t.clone().requires_grad_() for t in (base, h0_base, c0_base)]
        x = make_view(leaves[0])
        hx = (leaves[1].expand(2, B, 2), leaves[2].expand(2, B, H))
        y, (h_n, c_n) = m(x, hx)
        g = grads((y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).cos()).sum() + h_n.sum() + c_n.sum(),
                  leaves + list(m.parameters()))
        res.append([y, h_n, c_n, *g])
    for a, b in zip(res[1], res[0]):
        assert_close(a, b, msg=f"{name}")


def test_op_accepts_unusual_layouts_native():
    """The native op itself on non-contiguous xp, an expanded h0 / mask, a transposed w_hh
    and a strided lengths vector: the same as on contiguous copies."""
    if "native" not in CPU_BACKENDS:
        pytest.skip("no native backend")
    T, B = 5, 3
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    xp = r(B, T, 4 * H).transpose(0, 1)
    h0 = r(1, H).expand(B, H)
    c0 = r(B, 2 * H)[:, ::2]
    w_hh = r(H, 4 * H).t()
    mask = (torch.rand(1, H, generator=g, dtype=torch.float64) > 0.3).double().expand(B, H) / 0.7
    lengths = torch.tensor([5, 0, 3, 0, 4, 0])[::2]
    a = ops.lstm_recurrence(xp, h0, c0, w_hh, mask=mask, lengths=lengths, reverse=True, backend="native")
    b = ops.lstm_recurrence(*(t.contiguous() for t in (xp, h0, c0, w_hh)), mask=mask.contiguous(),
                            lengths=lengths.contiguous(), reverse=True, backend="native")
    for u, v in zip(a, b):
        assert_close(u, v)  # the GEMM may sum in another order for a transposed weight


# ---- long sequences: no stack or memory blow-up --------------------------------------------------------

_LONG = r"""
import json, resource, sys, torch, fusedrnn
torch.manual_seed(0)
T = 100_000
kw = dict(recurrent_dropout=0.2, batch_norm=True) if sys.argv[2] == "reg" else {}
m = fusedrnn.LSTM(4, 8, backend=sys.argv[1], **kw)
x = torch.randn(T, 2, 4, requires_grad=True)
with open("/proc/self/status") as f:
    rss0 = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
y, (h, c) = m(x)
(y.sum() + c.sum()).backward()
m.eval()
with torch.no_grad():
    y_prefix = m(x[:50].detach())[0]
    y_again = m(x.detach())[0][:50]
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
print(json.dumps(dict(finite=bool(torch.isfinite(y).all() and torch.isfinite(x.grad).all()),
                      prefix=bool(torch.equal(y_prefix, y_again)), peak_mb=(hwm - rss0) / 1024)))
"""


@pytest.mark.parametrize("backend,reg", [("native", "plain"), ("native", "reg"), ("auto", "reg")])
def test_t_100000_on_cpu(backend, reg):
    """T = 100000 in a fresh process (a blown stack would kill it): forward and backward
    finish, everything is finite, the first steps equal a run over only those steps, and
    the peak memory is the O(T B H) workspace (a few tens of MB here), not more."""
    out = run_python_json(_LONG, backend, reg, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    assert out["finite"] and out["prefix"], out
    # workspace + gradients: T * B * (4H act + H c + R hm (+ 4H BN) + 4H grad_xp + I) floats
    assert out["peak_mb"] < 400, out


# ---- backward in eval mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(recurrent_dropout=0.3, dropout=0.2, num_layers=2, batch_norm=True)],
                         ids=["plain", "regularized"])
def test_backward_in_eval_mode(backend, kw):
    """Dynamic evaluation differentiates an eval-mode model (cuDNN refuses: 'cudnn RNN
    backward can only be called in training mode'); every backend gives the reference's
    gradients, batch norm using its running statistics."""
    torch.manual_seed(0)
    ref = fusedrnn.LSTM(I, H, backend="reference", dtype=torch.float64, **kw)
    ours = fusedrnn.LSTM(I, H, backend=backend, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    if kw.get("batch_norm"):  # non-trivial running statistics
        for m in (ref, ours):
            g = torch.Generator().manual_seed(3)
            for b in m.buffers():
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    x = torch.randn(5, 3, I, dtype=torch.float64)
    res = []
    for m in (ref.eval(), ours.eval()):
        xx = x.clone().requires_grad_()
        y, (h, c) = m(xx)
        res.append([y, *grads((y ** 2).sum() + c.sum(), [xx] + list(m.parameters()))])
    for a, b in zip(res[1], res[0]):
        assert_close(a, b)
    assert all(p.grad is None for p in ours.parameters())  # grads() does not accumulate
    cells = [fusedrnn.LSTMCell(I, H, backend=b, batch_norm=bool(kw), dtype=torch.float64).eval()
             for b in ("reference", _cell_backend(backend))]
    cells[1].load_state_dict(cells[0].state_dict())
    res = []
    for cell in cells:
        x0 = x[0].clone().requires_grad_()
        hy, cy = cell(x0)
        res.append([hy, cy, *grads(hy.sum() + cy.pow(2).sum(), [x0] + list(cell.parameters()))])
    for a, b in zip(res[1], res[0]):
        assert_close(a, b)


# ---- autocast -------------------------------------------------------------------------------------------

AUTOCAST_CPU = [b for b in ["auto"] + CPU_BACKENDS]


@pytest.mark.parametrize("backend", AUTOCAST_CPU)
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, proj_size=2),
                                dict(recurrent_dropout=0.25, variational=True, batch_norm=True)],
                         ids=["plain", "L2-bd-proj", "v+bn"])
def test_autocast_bf16_on_cpu(backend, kw):
    """y and h_n in bfloat16 (as nn.LSTM's under autocast), c_n in float32; values and the
    float32 parameters' gradients close to a float32 run (bf16 GEMM inputs); backward works."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(I, H, backend=backend, **kw)
    x = torch.randn(6, 16, I, requires_grad=True)  # B = 16: batch norm is ill-conditioned on tiny batches
    torch.manual_seed(1)
    y32, (h32, c32) = m(x)
    w = torch.randn(y32.shape)
    g32 = torch.autograd.grad((y32 * w).sum() + c32.sum(), [x] + list(m.parameters()))
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(x)
    assert (y.dtype, h.dtype, c.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)
    g = torch.autograd.grad((y.float() * w).sum() + c.sum(), [x] + list(m.parameters()))
    for a, b, n in [(y, y32, "y"), (h, h32, "h_n"), (c, c32, "c_n")]:
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.05, msg=lambda s: f"{n}: {s}")
    for a, b in zip(g, g32):
        assert a.dtype == b.dtype
        assert _rel_err(a, b) < 0.02, _rel_err(a, b)  # measured 0.010-0.012


def _rel_err(a, b):
    """Relative error in norm: bf16 GEMM inputs (8 bits) move single elements of a gradient
    a lot more than the whole (batch-norm gradients are differences of near-equal terms)."""
    return ((a - b).norm() / b.norm().clamp(min=1e-6)).item()


@pytest.mark.parametrize("backend", AUTOCAST_CPU)
def test_autocast_cell_on_cpu(backend):
    torch.manual_seed(0)
    cell = fusedrnn.LSTMCell(I, H, backend=_cell_backend(backend), recurrent_dropout=0.2, variational=True)
    x = torch.randn(4, 3, I)
    hx32 = hx = None
    for t in range(4):
        torch.manual_seed(t)
        hx32 = cell(x[t], hx32)
        torch.manual_seed(t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hx = cell(x[t], hx)
        assert (hx[0].dtype, hx[1].dtype) == (torch.bfloat16, torch.float32)
    torch.testing.assert_close(hx[0].float(), hx32[0], rtol=0.05, atol=0.05)
    torch.testing.assert_close(hx[1], hx32[1], rtol=0.05, atol=0.05)
    hx[1].sum().backward()


def _accumulator(module, device="cpu"):
    """Weights under which c_t = c_{t-1} + 0.002 (f = i = 1, g = 0.002): a 16-bit cell
    state would round every increment away at c = 1 (bf16 spacing there is 2^-7)."""
    with torch.no_grad():
        for n, p in module.named_parameters():
            p.zero_()
        b = module.bias_ih_l0 if hasattr(module, "bias_ih_l0") else module.bias_ih
        b[0:H] = 20.0  # i
        b[H:2 * H] = 20.0  # f
        b[2 * H:3 * H] = math.atanh(0.002)  # g
    return module.to(device)


@pytest.mark.parametrize("backend", AUTOCAST_CPU)
def test_autocast_cell_state_stays_float32(backend):
    T = 100
    m = _accumulator(fusedrnn.LSTM(I, H, backend=backend))
    x = torch.randn(T, 2, I)
    c0 = torch.ones(1, 2, H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, (_, c) = m(x, (torch.zeros(1, 2, H), c0))
    torch.testing.assert_close(c, torch.full_like(c, 1 + T * 0.002), rtol=5e-3, atol=0)
    cell = _accumulator(fusedrnn.LSTMCell(I, H, backend=_cell_backend(backend)))
    hx = (torch.zeros(2, H), torch.ones(2, H))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for t in range(T):
            hx = cell(x[t], hx)
    torch.testing.assert_close(hx[1], torch.full_like(hx[1], 1 + T * 0.002), rtol=5e-3, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["auto", "cuda", "triton", "reference"])
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, proj_size=8),
                                dict(recurrent_dropout=0.25, variational=True, batch_norm=True)],
                         ids=["plain", "L2-bd-proj", "v+bn"])
def test_autocast_on_gpu(dtype, backend, kw):
    """fp16 and bf16 autocast on CUDA: y / h_n in the autocast dtype, c_n float32, values
    and gradients near a float32 run, and the float32 cell state (accumulator check)."""
    if fusedrnn.ops.decision.unavailable_reason(backend, torch.device("cuda")) if backend != "auto" else False:
        pytest.skip(f"{backend} unavailable")
    torch.manual_seed(0)
    m = fusedrnn.LSTM(16, 32, backend=backend, device="cuda", **kw)
    x = torch.randn(20, 8, 16, device="cuda", requires_grad=True)
    torch.manual_seed(1)
    y32, (h32, c32) = m(x)
    g32 = torch.autograd.grad(y32.sum() + c32.sum(), [x] + list(m.parameters()))
    torch.manual_seed(1)
    with torch.autocast("cuda", dtype=dtype):
        y, (h, c) = m(x)
    assert (y.dtype, h.dtype, c.dtype) == (dtype, dtype, torch.float32)
    g = torch.autograd.grad(y.float().sum() + c.sum(), [x] + list(m.parameters()))
    tol = dict(rtol=0.05, atol=0.05)
    torch.testing.assert_close(y.float(), y32, **tol)
    torch.testing.assert_close(c, c32, **tol)
    for a, b in zip(g, g32):
        assert _rel_err(a, b) < 0.05
    acc = _accumulator(fusedrnn.LSTM(I, H, backend=backend), "cuda")
    with torch.autocast("cuda", dtype=dtype):
        _, (_, c) = acc(torch.randn(100, 2, I, device="cuda"), (torch.zeros(1, 2, H, device="cuda"),
                                                                torch.ones(1, 2, H, device="cuda")))
    torch.testing.assert_close(c, torch.full_like(c, 1.2), rtol=5e-3, atol=0)
    cell = fusedrnn.LSTMCell(16, 32, backend="auto" if backend in ("triton", "auto") else backend, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        hy, cy = cell(x[0])
    assert (hy.dtype, cy.dtype) == (dtype, torch.float32)


# ---- state_dict round trips ---------------------------------------------------------------------------


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
