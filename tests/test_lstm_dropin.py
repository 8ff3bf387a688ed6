"""fusedrnn.LSTM is nn.LSTM: outputs and every gradient equal in float64 over a grid of
configurations (layers, directions, projection, batch_first, bias, input forms, hx)."""

import itertools

import pytest
import torch
from torch import nn

import fusedrnn
from helpers import assert_close, grads, make_input, output_tensor, random_loss

T, B, I, H = 5, 3, 4, 6

GRID = [
    dict(num_layers=L, bidirectional=bd, proj_size=P, batch_first=bf, bias=bias)
    for L, bd, P, bf, bias in itertools.product((1, 2), (False, True), (0, 3), (False, True), (True, False))
    if not (bf and not bias)  # keep the grid moderate: batch_first x no-bias adds nothing
]


def _id(c):
    return "L{num_layers}-bd{bidirectional:d}-P{proj_size}-bf{batch_first:d}-bias{bias:d}".format(**c)


def _pair(cfg, dtype=torch.float64, **options):
    torch.manual_seed(123)
    ref = nn.LSTM(I, H, dtype=dtype, **cfg)
    torch.manual_seed(123)
    fused = fusedrnn.LSTM(I, H, dtype=dtype, **cfg, **options)
    return ref, fused


# "auto" with a plain CPU module runs torch's own LSTM (compared with itself here only as the
# default construction users write); "auto-fused" is the default construction on the fused path:
# batch norm in eval mode made an identity (unit gammas and running variances, zero means and
# beta, eps 1e-300: exact in float64), which auto must route to the fused kernels.
DROPIN_BACKENDS = fusedrnn.available_backends("cpu") + ["auto", "auto-fused"]


def _dropin_pair(cfg, backend):
    if backend != "auto-fused":
        return _pair(cfg, backend=backend)
    ref, fused = _pair(cfg, batch_norm=True, bn_eps=1e-300)
    with torch.no_grad():
        for n, p in fused.named_parameters():
            if n.startswith("bn_") and "weight" in n:
                p.fill_(1.0)
    return ref.eval(), fused.eval()


@pytest.mark.parametrize("backend", DROPIN_BACKENDS)
@pytest.mark.parametrize("cfg", GRID, ids=_id)
@pytest.mark.parametrize("kind", ["batched", "unbatched", "packed", "packed_unsorted"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_matches_nn_lstm(cfg, kind, with_hx, backend):
    _check_matches_nn_lstm(cfg, kind, with_hx, backend)


TRITON_GRID = [c for c in GRID if c["num_layers"] == 2 and c["bias"] and c["bidirectional"]]


# every configuration with every input kind, with and without hx in turn (each configuration and
# each kind meets both): half of the full product, at about a second a case on the interpreter
TRITON_CASES = [(c, k, (i + j) % 2 == 1) for i, c in enumerate(TRITON_GRID)
                for j, k in enumerate(["batched", "unbatched", "packed_unsorted"])]


@pytest.mark.skipif(fusedrnn.ops.decision.unavailable_reason("triton", torch.device("cpu")) is not None,
                    reason="triton interpreter not available")
@pytest.mark.parametrize("cfg,kind,with_hx", TRITON_CASES,
                         ids=[f"{'hx' if h else 'nohx'}-{k}-{_id(c)}" for c, k, h in TRITON_CASES])
def test_matches_nn_lstm_triton(cfg, kind, with_hx):
    """The same on the triton kernels (interpreter), on a reduced grid (two bidirectional layers
    with bias; the interpreter takes about a second a case)."""
    _check_matches_nn_lstm(cfg, kind, with_hx, "triton")


def _check_matches_nn_lstm(cfg, kind, with_hx, backend):
    ref, fused = _dropin_pair(cfg, backend)
    if backend == "auto-fused":
        assert "aten" not in fusedrnn.explain(fused, make_input(kind, T, B, I, cfg["batch_first"],
                                                                torch.float64)[0])
    # Same construction, same initialization, same names and order (batch norm's come after).
    names = [n for n, _ in ref.named_parameters()]
    assert names == [n for n, _ in fused.named_parameters()][:len(names)]
    for (n, p), (_, q) in zip(ref.named_parameters(), fused.named_parameters()):
        assert torch.equal(p, q), n
    inp, leaf = make_input(kind, T, B, I, cfg["batch_first"], torch.float64)
    D = 2 if cfg["bidirectional"] else 1
    R = cfg["proj_size"] or H
    hx = None
    if with_hx:
        shape = (cfg["num_layers"] * D,) + (() if kind == "unbatched" else (B,))
        h0 = torch.randn(*shape, R, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(*shape, H, dtype=torch.float64, requires_grad=True)
        hx = (h0, c0)
    out_r, (h_r, c_r) = ref(inp, hx)
    out_f, (h_f, c_f) = fused(inp, hx)
    assert type(out_r) is type(out_f)
    if hasattr(out_r, "batch_sizes"):
        assert torch.equal(out_r.batch_sizes, out_f.batch_sizes)
        for a in ("sorted_indices", "unsorted_indices"):
            ra, fa = getattr(out_r, a), getattr(out_f, a)
            assert (ra is None and fa is None) or torch.equal(ra, fa)
    for a, b, name in ((output_tensor(out_f), output_tensor(out_r), "output"), (h_f, h_r, "h_n"), (c_f, c_r, "c_n")):
        assert a.shape == b.shape, name
        assert_close(a, b, msg=name)
    wrt = [leaf] + ([*hx] if hx else []) + list(ref.parameters())
    wrt_f = [leaf] + ([*hx] if hx else []) + list(fused.parameters())
    g_r = grads(random_loss(out_r, h_r, c_r), wrt)
    g_f = grads(random_loss(out_f, h_f, c_f), wrt_f)
    names = ["input"] + (["h0", "c0"] if hx else []) + [n for n, _ in ref.named_parameters()]
    for a, b, n in zip(g_f, g_r, names):
        assert_close(a, b, msg=f"grad {n}")


@pytest.mark.parametrize("backend", ["auto", "native"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_both_ways(dtype, backend):
    cfg = dict(num_layers=2, bidirectional=True, proj_size=3)
    ref = nn.LSTM(I, H, dtype=dtype, **cfg)
    fused = fusedrnn.LSTM(I, H, dtype=dtype, backend=backend, **cfg)
    assert list(ref.state_dict()) == list(fused.state_dict())
    fused.load_state_dict(ref.state_dict())
    for (n, p), (_, q) in zip(ref.named_parameters(), fused.named_parameters()):
        assert torch.equal(p, q), n
    ref2 = nn.LSTM(I, H, dtype=dtype, **cfg)
    ref2.load_state_dict(fused.state_dict())
    x = torch.randn(T, B, I, dtype=dtype)
    assert_close(ref2(x)[0], fused(x)[0], dtype=dtype)
    # A module with regularizers still loads a plain nn.LSTM checkpoint (strict=False
    # only for the extra BN entries) and saves the LSTM weights under nn.LSTM's names.
    reg = fusedrnn.LSTM(I, H, dtype=dtype, batch_norm=True, recurrent_dropout=0.1, **cfg)
    missing, unexpected = reg.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("bn_") for k in missing)
    ref3 = nn.LSTM(I, H, dtype=dtype, **cfg)
    ref3.load_state_dict({k: v for k, v in reg.state_dict().items() if not k.startswith("bn_")})


def test_module_api_surface():
    fused = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True)
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    assert repr(fused) == repr(ref)
    assert fused._flat_weights_names == ref._flat_weights_names
    assert [[tuple(w.shape) for w in ws] for ws in fused.all_weights] == [
        [tuple(w.shape) for w in ws] for ws in ref.all_weights
    ]
    fused.flatten_parameters()  # a no-op on CPU, as for nn.LSTM
    assert "recurrent_dropout=0.2" in repr(fusedrnn.LSTM(I, H, recurrent_dropout=0.2))


def test_init_matches_under_seed_with_regularizers():
    torch.manual_seed(7)
    ref = nn.LSTM(I, H, num_layers=2)
    torch.manual_seed(7)
    fused = fusedrnn.LSTM(I, H, num_layers=2, batch_norm=True, recurrent_dropout=0.3, variational=True)
    for n, p in ref.named_parameters():
        assert torch.equal(p, getattr(fused, n)), n
    assert torch.equal(fused.bn_h_weight_l1, torch.full((4 * H,), 0.1))
    assert torch.equal(fused.bn_c_bias_l0, torch.zeros(H))
    # the generator is left where nn.LSTM leaves it
    assert torch.equal(torch.rand(3), (torch.manual_seed(7), nn.LSTM(I, H, num_layers=2), torch.rand(3))[2])


@pytest.mark.parametrize("backend", ["auto", "native", "reference"])
def test_eval_mode_regularizers_are_identity_without_bn(backend):
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=2, dropout=0.5).eval()
    fused = fusedrnn.LSTM(I, H, num_layers=2, dropout=0.5, recurrent_dropout=0.5, variational=True,
                          backend=backend).eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    assert_close(fused(x)[0], ref(x)[0], dtype=torch.float32)


@pytest.mark.parametrize("backend", ["auto", "native"])
def test_convert_replaces_every_lstm(backend):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.LSTM(I, H, batch_first=True)
            self.inner = nn.Sequential(nn.Linear(H, H))
            self.dec = nn.LSTMCell(H, H)

    torch.manual_seed(0)
    m = Model().double().eval()
    x = torch.randn(B, T, I, dtype=torch.float64)
    ref_out = m.enc(x)[0]
    ref_cell = m.dec(ref_out[:, -1])
    new = fusedrnn.convert(m, recurrent_dropout=0.1, backend=backend)
    assert new is m and isinstance(m.enc, fusedrnn.LSTM) and isinstance(m.dec, fusedrnn.LSTMCell)
    assert m.enc.backend == backend and m.dec.backend == backend
    assert m.enc.recurrent_dropout == 0.1 and not m.enc.training
    assert m.enc.weight_ih_l0.dtype == torch.float64
    assert_close(m.enc(x)[0], ref_out)
    assert_close(m.dec(ref_out[:, -1])[0], ref_cell[0])
    lone = fusedrnn.convert(nn.LSTM(I, H))
    assert isinstance(lone, fusedrnn.LSTM)
    assert fusedrnn.convert(lone) is lone
