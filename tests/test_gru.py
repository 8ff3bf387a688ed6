"""fusedrnn.GRU / GRUCell are nn.GRU / nn.GRUCell: outputs and every gradient equal in float64
over the drop-in grid (layers, directions, batch_first, bias, input forms, hx) on every
backend with GRU kernels; torch's errors; ``lengths=``; and the paths users take (convert,
patch, torch.compile, whole-model save and load, export).  The options' semantics are
tests/test_option_matrix.py's (against the row-by-row oracle).
"""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import backends
from fusedrnn.core.contract import CellKind
from helpers import CPU_BACKENDS, assert_close, grads, make_input, output_tensor

T, B, I, H = 5, 3, 4, 6
GRU_BACKENDS = [b for b in CPU_BACKENDS if CellKind.GRU in backends.get(b).cells] + ["auto"]
GRID = [dict(num_layers=L, bidirectional=bd, batch_first=bf, bias=bias)
        for L, bd, bf, bias in itertools.product((1, 2), (False, True), (False, True), (True, False))
        if not (bf and not bias)]


def _id(c):
    return "L{num_layers}-bd{bidirectional:d}-bf{batch_first:d}-bias{bias:d}".format(**c)


def _pair(cfg, backend, **options):
    torch.manual_seed(123)
    ref = nn.GRU(I, H, dtype=torch.float64, **cfg)
    torch.manual_seed(123)
    ours = fusedrnn.GRU(I, H, dtype=torch.float64, backend=backend, **cfg, **options)
    return ref, ours


# The Triton interpreter takes ~0.1 s a launch: the whole matrix on the other backends, and on
# Triton the configurations that exercise every path at once (as the LSTM's drop-in tests).
DROPIN_BACKENDS = [b for b in GRU_BACKENDS if b != "triton"]
TRITON_GRID = [c for c in GRID if c["num_layers"] == 2 and c["bias"] and c["bidirectional"]]


# "auto" runs torch's own GRU for a plain module; "fused" forces the fused path through an
# identity batch norm in eval mode (unit gammas and variances, zero means, eps 1e-300: exact)
@pytest.mark.parametrize("backend", DROPIN_BACKENDS + ["fused"])
@pytest.mark.parametrize("cfg", GRID, ids=_id)
@pytest.mark.parametrize("kind", ["batched", "unbatched", "packed_unsorted"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_matches_nn_gru(cfg, kind, with_hx, backend):
    _check_matches_nn_gru(cfg, kind, with_hx, backend)


# every configuration with every input kind, with and without hx in turn (each meets both)
TRITON_CASES = [(c, k, (i + j) % 2 == 1) for i, c in enumerate(TRITON_GRID)
                for j, k in enumerate(["batched", "unbatched", "packed_unsorted"])]


@pytest.mark.skipif("triton" not in GRU_BACKENDS, reason="the Triton interpreter is off")
@pytest.mark.parametrize("cfg,kind,with_hx", TRITON_CASES,
                         ids=[f"{'hx' if h else 'nohx'}-{k}-{_id(c)}" for c, k, h in TRITON_CASES])
def test_matches_nn_gru_triton(cfg, kind, with_hx):
    _check_matches_nn_gru(cfg, kind, with_hx, "triton")


def _check_matches_nn_gru(cfg, kind, with_hx, backend):
    if backend == "fused":
        ref, ours = _pair(cfg, "auto", batch_norm=True, bn_eps=1e-300)
        with torch.no_grad():
            for n, p in ours.named_parameters():
                if n.startswith("bn_"):
                    p.fill_(1.0)
        ref.eval(), ours.eval()
    else:
        ref, ours = _pair(cfg, backend)
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in ours.named_parameters()][:len(list(ref.parameters()))]
    inp, leaf = make_input(kind, T, B, I, cfg["batch_first"], torch.float64)
    D = 2 if cfg["bidirectional"] else 1
    hx = None
    if with_hx:
        shape = (cfg["num_layers"] * D, H) if kind == "unbatched" else (cfg["num_layers"] * D, B, H)
        hx = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    res = []
    for m in (ref, ours):
        out, h_n = m(inp, hx)
        w = torch.linspace(-1, 1, output_tensor(out).numel(), dtype=torch.float64).view_as(output_tensor(out))
        loss = (output_tensor(out) * w).sum() + (h_n * h_n).sum()
        params = [leaf] + ([hx] if hx is not None else []) + list(m.parameters())[:len(list(ref.parameters()))]
        res.append([output_tensor(out), h_n] + grads(loss, params))
    for a, b in zip(res[1], res[0]):
        assert_close(a, b)
    if backend == "fused":
        assert "aten" not in fusedrnn.explain(ours, inp)


@pytest.mark.parametrize("backend", GRU_BACKENDS)
def test_cell_matches_nn_grucell(backend):
    torch.manual_seed(0)
    ref = nn.GRUCell(I, H, dtype=torch.float64)
    ours = fusedrnn.GRUCell(I, H, dtype=torch.float64, backend=backend)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    res = []
    for m in (ref, ours):
        h, hs = None, []
        for t in range(T):
            h = m(x[t], h)
            hs.append(h)
        y = torch.stack(hs)
        res.append([y] + grads((y * y.cos()).sum(), [x] + list(m.parameters())))
    for a, b in zip(res[1], res[0]):
        assert_close(a, b)
    assert ours(x[0, 0]).shape == (H,)  # unbatched


def test_gru_options_run_fused_and_plain_runs_torch():
    x = torch.randn(T, B, I)
    plain = fusedrnn.GRU(I, H)
    assert "aten (torch's own GRU)" in fusedrnn.explain(plain, torch.randn(T, 129, I))
    with torch.no_grad():
        assert "aten (torch's own GRU)" in fusedrnn.explain(plain, torch.randn(T, 129, I))
    if "native" in CPU_BACKENDS:  # where the records have the native kernel faster (float32)
        assert "B=3 <= 128 (fwd+bwd)" in fusedrnn.explain(plain, x)
        with torch.no_grad():
            assert "B=128 <= 128 (inference)" in fusedrnn.explain(plain, torch.randn(T, 128, I))
        assert "aten" in fusedrnn.explain(plain.double(), x.double())  # (measured in float32 only)
    report = fusedrnn.explain(fusedrnn.GRU(I, H, recurrent_dropout=0.2), x)
    assert "GRU lacks" in report and "aten" not in report.splitlines()[1]
    if "native" in CPU_BACKENDS and CellKind.GRU not in backends.get("native").cells:
        assert "no GRU kernels" in report


@pytest.mark.parametrize("bad,exc,match", [
    (lambda: fusedrnn.GRU(I, H, proj_size=2), ValueError, "proj_size argument is only supported for LSTM"),
    (lambda: fusedrnn.GRU(I, H, zoneout=(0.1, 0.2)), ValueError, "zoneout is one rate"),
    (lambda: fusedrnn.GRUCell(I, H, zoneout=(0.1, 0.2)), ValueError, "zoneout is one rate"),
    (lambda: fusedrnn.GRU(I, H, recurrent_dropout=0.1)(torch.randn(T, B, I), torch.zeros(1, H)), RuntimeError,
     "For batched 3-D input, hx should also be 3-D but got 2-D tensor"),
    (lambda: fusedrnn.GRU(I, H, recurrent_dropout=0.1)(torch.randn(T, I), torch.zeros(1, 1, H)), RuntimeError,
     "For unbatched 2-D input, hx should also be 2-D but got 3-D tensor"),
    (lambda: fusedrnn.GRU(I, H, recurrent_dropout=0.1)(torch.randn(T, B, I + 1)), RuntimeError,
     "input.size\\(-1\\) must be equal to input_size"),
    (lambda: fusedrnn.GRUCell(I, H, recurrent_dropout=0.1)(torch.randn(B, I), torch.zeros(B, H + 1)), RuntimeError,
     "hidden0 has inconsistent hidden_size"),
    (lambda: fusedrnn.GRUCell(I, H, recurrent_dropout=0.1)(torch.randn(B, I), torch.zeros(1, B, H)), ValueError,
     "GRUCell: Expected hidden to be 1D or 2D"),
], ids=["proj", "zoneout-pair", "cell-zoneout-pair", "hx-2d", "hx-3d-unbatched", "input-size", "cell-hx-size",
        "cell-hx-3d"])
def test_errors_as_torch(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()


def test_lengths_equal_pack_pad():
    torch.manual_seed(0)
    m = fusedrnn.GRU(I, H, 2, batch_first=True, bidirectional=True, layer_norm=True, dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 0])
    y, h = m(x, lengths=lengths)
    packed = pack_padded_sequence(x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
    yp, hp = m(packed)
    yp, _ = pad_packed_sequence(yp, batch_first=True, total_length=T)
    assert_close(y[:2], yp[:2])
    assert_close(h[:, :2], hp[:, :2])
    assert torch.all(y[2] == 0) and torch.all(h[:, 2] == 0)  # a zero length keeps h_0
    plain = fusedrnn.GRU(I, H, batch_first=True, dtype=torch.float64)
    y2, h2 = plain(x, lengths=lengths)  # torch's GRU on the aten path, packed inside
    assert torch.all(y2[2] == 0) and y2.shape == (B, T, H)


def test_convert_patch_and_whole_model_save_load():
    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(I, H, batch_first=True))
    held = list(model.parameters())
    fusedrnn.convert(model, recurrent_dropout=0.2, variational=True)
    assert isinstance(model[0], fusedrnn.GRU) and all(a is b for a, b in zip(held, model.parameters()))
    assert isinstance(fusedrnn.convert(nn.GRUCell(I, H)), fusedrnn.GRUCell)
    assert type(fusedrnn.convert(nn.GRU(I, H), gru=False)) is nn.GRU
    with fusedrnn.patch(zoneout=0.1):
        g, c = nn.GRU(I, H), nn.GRUCell(I, H)
    assert isinstance(g, fusedrnn.GRU) and isinstance(c, fusedrnn.GRUCell) and g.zoneout == 0.1
    with fusedrnn.patch(gru=False):
        assert nn.GRU is torch.nn.modules.rnn.GRU and nn.GRU(I, H).__class__.__module__ == "torch.nn.modules.rnn"
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf)  # weights_only: GRU is registered
    x = torch.randn(2, T, I)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x)[0], model(x)[0])


@pytest.mark.parametrize("options", [dict(), dict(recurrent_dropout=0.2, variational=True, layer_norm=True)],
                         ids=["plain", "regularized"])
def test_compile_fullgraph_default_construction(options):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = fusedrnn.GRU(I, H, 2, dtype=torch.float64, **options)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    for training in (True, False):
        m.train(training)
        torch.manual_seed(1)
        got = compiled(x)
        torch.manual_seed(1)
        want = m(x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()


def test_export_uses_standard_ops():
    torch.manual_seed(0)
    for options, op in ((dict(), "aten.gru"), (dict(batch_norm=True), None)):
        m = fusedrnn.GRU(I, H, **options).eval()
        x = torch.randn(T, B, I)
        ep = torch.export.export(m, (x,))
        text = str(ep.graph)
        assert "fusedrnn" not in text
        if op:
            assert op.replace(".", ".") in text
        torch.testing.assert_close(ep.module()(x)[0], m(x)[0])


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="the Triton interpreter is off")
def test_triton_gru_declines_what_it_lacks():
    x = torch.randn(T, B, I)
    report = fusedrnn.explain(fusedrnn.GRU(I, H, backend="triton", recurrent_dropout=0.2), x)
    assert "(GRU, " in report  # the design and its tiles (persistent in the interpreter: one program)
    with pytest.raises(fusedrnn.BackendError, match="spills"):
        fusedrnn.GRU(I, H, backend="triton", batch_norm=True)(torch.randn(2, 129, I))


@pytest.mark.parametrize("options", [dict(recurrent_dropout=0.3), dict(recurrent_dropout=0.3, variational=True,
                                                                         dropout=0.2),
                                     dict(zoneout=0.3, weight_dropout=0.3)], ids=["per-step", "variational", "zo+wd"])
def test_same_seed_same_masks_on_every_backend(options):
    """The module draws its masks (recurrent, between layers, zoneout, DropConnect) itself, from
    torch's generator: the same seed gives the same training step on every backend."""
    res = {}
    for backend in [b for b in GRU_BACKENDS if b != "auto"]:
        torch.manual_seed(0)
        m = fusedrnn.GRU(I, H, num_layers=2, dtype=torch.float64, backend=backend, **options)
        x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(1)
        y, h = m(x)
        res[backend] = [y, h] + grads((y * y.cos()).sum(), [x] + list(m.parameters()))
    ref = res.pop("reference")
    for backend, got in res.items():
        for a, b in zip(got, ref):
            assert_close(a, b)
