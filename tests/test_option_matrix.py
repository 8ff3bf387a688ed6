"""Every option x {LSTM, LSTMCell, GRU, GRUCell} x {train, eval}, on the default
construction, against the independent row-by-row oracles (tests/direct.py): outputs, final
state, running statistics and gradients, with the masks and zoneout draws the module made
(replayed from the same seed in the module's order).  One table (CASES) generates every
combination, and a test checks that every option of the modules has a row, so a new option
(or a new cell) cannot skip a cell of the table.
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from fusedrnn import ops
from fusedrnn.modules.regularizers import LN_EPS, OPTIONS
from fusedrnn.ops.dropout import dropout_mask, recurrent_mask, weight_mask, zoneout_weights
from direct import direct_gru_layer, direct_layer

T, B, I, H = 4, 3, 3, 4
CASES = {
    "plain": {},
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "variational": dict(recurrent_dropout=0.4, variational=True),
    "batch_norm": dict(batch_norm=True, bn_max_steps=3, bn_momentum=0.2, bn_eps=1e-3),
    "layer_norm": dict(layer_norm=True),
    "batch_norm+recompute": dict(batch_norm=True, bn_max_steps=3, recompute=True),
    "layer_norm+recompute": dict(layer_norm=True, recompute=True),
    "zoneout": dict(zoneout=(0.4, 0.3)),
    "weight_dropout": dict(weight_dropout=0.4),
}
GRU_CASES = {"zoneout": dict(zoneout=0.3)}  # a GRU has one zoneout rate
KINDS = ["lstm", "cell", "gru", "gru_cell"]
NOT_SEMANTICS = {"backend"}  # the options that choose where, not what


def test_every_option_has_a_case():
    covered = set().union(*(c.keys() for c in CASES.values()))
    assert set(OPTIONS) - NOT_SEMANTICS <= covered, set(OPTIONS) - NOT_SEMANTICS - covered


def _module(kind: str, opts: dict, training: bool):
    torch.manual_seed(0)
    cls = {"lstm": fusedrnn.LSTM, "cell": fusedrnn.LSTMCell, "gru": fusedrnn.GRU, "gru_cell": fusedrnn.GRUCell}[kind]
    m = cls(I, H, dtype=torch.float64, **opts)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in m.named_parameters():  # every gain and bias away from its initial value
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for b in m.buffers():  # running statistics that differ per slot
            b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return m.train(training)


def _sfx(kind):
    return "_l0" if kind in ("lstm", "gru") else ""


def _oracle_args(m, kind: str, x: torch.Tensor, buffers: dict):
    """Replay the module's draws (seed 1, the module's order) and collect the oracle's
    arguments: weights (W_hh masked), mask, zoneout weights, batch-norm (running statistics:
    ``buffers``, as before the module ran) and layer-norm dicts."""
    sfx = _sfx(kind)
    g = lambda n: getattr(m, n + sfx)  # noqa: E731
    w_ih, w_hh, b_ih, b_hh = g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh")
    training, p_rec, p_w = m.training, m.recurrent_dropout, m.weight_dropout
    rates = m.zoneout_rates() if m.zoneout_active() else None
    torch.manual_seed(1)
    mask = zo = wmask = None
    cell = m._cell
    if kind in ("lstm", "gru"):
        if training and p_rec > 0:
            mask = recurrent_mask(p_rec, T, B, H, x, shared=m.variational)
        if rates:
            zo = zoneout_weights(rates, T, B, H, H, x, training, cell)
        if training and p_w > 0:
            wmask = weight_mask(p_w, w_hh.shape, w_hh)
    else:
        masks, zcs, zhs = [], [], []
        for s in range(T):
            if training and p_rec > 0 and (not m.variational or s == 0):
                masks.append(dropout_mask(p_rec, (B, H), w_hh))
            if training and p_w > 0 and s == 0:
                wmask = weight_mask(p_w, w_hh.shape, w_hh)
            if rates:
                z = zoneout_weights(rates, 1, B, H, H, x[s], training, cell)
                zcs.append(None if z.c is None else z.c[0])
                zhs.append(z.h[0])
        if masks:
            mask = masks[0] if m.variational else torch.stack(masks)
        if rates:
            zo = (None if zcs[0] is None else torch.stack(zcs), torch.stack(zhs))
    if wmask is not None:
        w_hh = w_hh * wmask
    bn = ln = None
    parts = "xhc" if cell == ops.CellKind.LSTM else "xh"
    if m.batch_norm:
        bn = dict(gamma_x=g("bn_x_weight"), gamma_h=g("bn_h_weight"), training=training, momentum=m.bn_momentum,
                  eps=m.bn_eps, **{f"r{s}_{p}": buffers[f"bn_{p}_running_{'mean' if s == 'm' else 'var'}{sfx}"].clone()
                                   for p in parts for s in "mv"})
        if "c" in parts:
            bn.update(gamma_c=g("bn_c_weight"), beta_c=g("bn_c_bias"))
    if m.layer_norm:
        ln = dict(wx=g("ln_x_weight"), bx=g("ln_x_bias"), wh=g("ln_h_weight"), bh=g("ln_h_bias"), eps=LN_EPS)
        if "c" in parts:
            ln.update(wc=g("ln_c_weight"), bc=g("ln_c_bias"))
    if cell == ops.CellKind.GRU and zo is not None:
        zo = zo[1]  # the GRU oracle takes the h weights
    return (w_ih, w_hh, b_ih, b_hh), dict(mask=mask, zoneout=zo, bn=bn, ln=ln)


def _run_module(m, kind, x):
    torch.manual_seed(1)
    if kind == "lstm":
        y, (h, c) = m(x)
        return y, h[0], c[0]
    if kind == "gru":
        y, h = m(x)
        return y, h[0]
    hx, ys = None, []
    for s in range(T):
        hx = m(x[s], hx)
        ys.append(hx if kind == "gru_cell" else hx[0])
    return (torch.stack(ys), hx) if kind == "gru_cell" else (torch.stack(ys), hx[0], hx[1])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_option_against_the_oracle(case, kind, training):
    gru = kind.startswith("gru")
    m = _module(kind, GRU_CASES.get(case, CASES[case]) if gru else CASES[case], training)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    params = [x] + [p for n, p in m.named_parameters()]
    before = {n: b.clone() for n, b in m.named_buffers()}
    got = _run_module(m, kind, x)
    (w_ih, w_hh, b_ih, b_hh), kw = _oracle_args(m, kind, x, before)
    z = torch.zeros(B, H, dtype=torch.float64)
    want = direct_gru_layer(x, z, w_ih, w_hh, b_ih, b_hh, **kw) if gru else \
        direct_layer(x, z, z, w_ih, w_hh, b_ih, b_hh, **kw)
    wts = [torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(3 + i)) for i, t in
           enumerate(got)]
    loss = lambda out: sum((o * w).sum() for o, w in zip(out, wts))  # noqa: E731
    g_got = torch.autograd.grad(loss(got), params, allow_unused=True)
    g_want = torch.autograd.grad(loss(want), params, allow_unused=True)
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for a, b, n in zip(got, want, ("y", "h_n", "c_n")):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda s: f"{n}: {s}")
    for a, b, n in zip(g_got, g_want, names):
        if b is None:
            assert a is None or not a.abs().max() > 0, n
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda s: f"grad {n}: {s}")
    if m.batch_norm:  # the running statistics the module kept, as the oracle updated them
        for p in ("xh" if gru else "xhc"):
            for s, stat in (("m", "mean"), ("v", "var")):
                torch.testing.assert_close(getattr(m, f"bn_{p}_running_{stat}{_sfx(kind)}"), kw["bn"][f"r{s}_{p}"],
                                           rtol=1e-9, atol=1e-12, msg=lambda e: f"running {stat} {p}: {e}")
