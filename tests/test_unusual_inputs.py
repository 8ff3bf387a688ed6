"""Inputs that are unusual but valid: NaN / Inf (propagate as nn.LSTM's do), an empty
batch, non-contiguous / expanded / overlapping tensors, T = 100000, and backward in eval mode
(dynamic evaluation), on every CPU backend (triton through the interpreter, small shapes).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import ops
from helpers import CPU_BACKENDS, assert_close, cell_backend, grads, run_python_json

I, H = 3, 4
NAN, INF = float("nan"), float("inf")
FUSED_CPU = [b for b in CPU_BACKENDS if b != "reference"]  # each compared with the reference


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


@pytest.mark.parametrize("backend", FUSED_CPU)
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
    cell, ref_cell = fusedrnn.LSTMCell(I, H, backend=cell_backend(backend)), nn.LSTMCell(I, H)
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


@pytest.mark.parametrize("backend,reg", [("native", "plain"), ("auto", "reg")])  # auto: native on the CPU
def test_t_100000_on_cpu(backend, reg):
    """T = 100000 in a fresh process (a blown stack would kill it): forward and backward
    finish, everything is finite, the first steps equal a run over only those steps, and
    the peak memory is the O(T B H) workspace (a few tens of MB here), not more."""
    out = run_python_json(_LONG, backend, reg, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    assert out["finite"] and out["prefix"], out
    # workspace + gradients: T * B * (4H act + H c + R hm (+ 4H BN) + 4H grad_xp + I) floats
    assert out["peak_mb"] < 400, out


# ---- backward in eval mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FUSED_CPU)
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
             for b in ("reference", cell_backend(backend))]
    cells[1].load_state_dict(cells[0].state_dict())
    res = []
    for cell in cells:
        x0 = x[0].clone().requires_grad_()
        hy, cy = cell(x0)
        res.append([hy, cy, *grads(hy.sum() + cy.pow(2).sum(), [x0] + list(cell.parameters()))])
    for a, b in zip(res[1], res[0]):
        assert_close(a, b)
