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


@pytest.mark.parametrize("backend", fusedrnn.available_backends("cpu"))
@pytest.mark.parametrize("cfg", GRID, ids=_id)
@pytest.mark.parametrize("kind", ["batched", "unbatched", "packed", "packed_unsorted"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_matches_nn_lstm(cfg, kind, with_hx, backend):
    if kind == "unbatched" and cfg["batch_first"]:
        pytest.skip("unbatched ignores batch_first")
    ref, fused = _pair(cfg, backend=backend)
    # Same construction, same initialization, same names and order.
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in fused.named_parameters()]
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_both_ways(dtype):
    cfg = dict(num_layers=2, bidirectional=True, proj_size=3)
    ref = nn.LSTM(I, H, dtype=dtype, **cfg)
    fused = fusedrnn.LSTM(I, H, dtype=dtype, **cfg)
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


def test_eval_mode_regularizers_are_identity_without_bn():
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=2, dropout=0.5).eval()
    fused = fusedrnn.LSTM(I, H, num_layers=2, dropout=0.5, recurrent_dropout=0.5, variational=True).eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    assert_close(fused(x)[0], ref(x)[0], dtype=torch.float32)


def test_convert_replaces_every_lstm():
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
    new = fusedrnn.convert(m, recurrent_dropout=0.1)
    assert new is m and isinstance(m.enc, fusedrnn.LSTM) and isinstance(m.dec, fusedrnn.LSTMCell)
    assert m.enc.recurrent_dropout == 0.1 and not m.enc.training
    assert m.enc.weight_ih_l0.dtype == torch.float64
    assert_close(m.enc(x)[0], ref_out)
    assert_close(m.dec(ref_out[:, -1])[0], ref_cell[0])
    lone = fusedrnn.convert(nn.LSTM(I, H))
    assert isinstance(lone, fusedrnn.LSTM)
    assert fusedrnn.convert(lone) is lone
