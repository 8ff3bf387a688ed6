"""Recurrent dropout and recurrent batch norm: the layer op against the direct
implementation (tests/direct.py) for every option and combination, and the module-level
semantics of masks (shared vs per step, rate, eval identity, emitted h unmasked)."""

import itertools

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import ops
from direct import direct_layer
from helpers import TRITON, assert_close, grads

T, B, I, H, P, S = 6, 5, 4, 5, 3, 4
G = 4 * H


def _bn_tensors(dtype, training, seed=3):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    d = dict(
        gamma_x=(0.1 + r(G)).requires_grad_(), gamma_h=(0.1 + r(G)).requires_grad_(),
        gamma_c=(0.1 + r(H)).requires_grad_(), beta_c=(r(H) - 0.5).requires_grad_(),
        rm_x=r(S, G) - 0.5, rv_x=0.5 + r(S, G), rm_h=r(S, G) - 0.5, rv_h=0.5 + r(S, G),
        rm_c=r(S, H) - 0.5, rv_c=0.5 + r(S, H), training=training, momentum=0.2, eps=1e-3,
    )
    return d


def _to_recurrent_bn(d):
    return ops.RecurrentBN(
        weight_x=d["gamma_x"], weight_h=d["gamma_h"], weight_c=d["gamma_c"], bias_c=d["beta_c"],
        running_mean_x=d["rm_x"], running_var_x=d["rv_x"], running_mean_h=d["rm_h"],
        running_var_h=d["rv_h"], running_mean_c=d["rm_c"], running_var_c=d["rv_c"],
        training=d["training"], momentum=d["momentum"], eps=d["eps"],
    )


def _clone_bn(d):
    return {k: (v.detach().clone().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v)
            for k, v in d.items()}


CASES = list(itertools.product([None, "shared", "per_step"], [None, "train", "eval"], [0, P],
                               [False, True], [False, True]))


# the triton kernels (interpreter, about a second a case) on a subset: every option once,
# and all of them together
TRITON_CASES = [c for c in CASES if sum((c[0] is not None, c[1] is not None, c[2] != 0, c[3], c[4])) <= 1
                or c == ("per_step", "train", P, True, True) or c == ("shared", "eval", P, True, False)]
BACKEND_CASES = [(b, c) for b in fusedrnn.available_backends("cpu") for c in CASES] + \
    ([("triton", c) for c in TRITON_CASES] if TRITON else [])


@pytest.mark.parametrize("backend,case", BACKEND_CASES,
                         ids=[f"{b}-mask{m}-bn{bn}-P{p}-len{int(l)}-rev{int(r)}" for b, (m, bn, p, l, r) in BACKEND_CASES])
def test_layer_matches_direct(case, backend):
    mask_kind, bn_mode, proj, packed, reverse = case
    dtype = torch.float64
    g = torch.Generator().manual_seed(11)
    R = proj or H
    x = torch.randn(T, B, I, generator=g, dtype=dtype, requires_grad=True)
    h0 = torch.randn(B, R, generator=g, dtype=dtype, requires_grad=True)
    c0 = torch.randn(B, H, generator=g, dtype=dtype, requires_grad=True)
    w_ih = (0.5 * torch.randn(G, I, generator=g, dtype=dtype)).requires_grad_()
    w_hh = (0.5 * torch.randn(G, R, generator=g, dtype=dtype)).requires_grad_()
    b_ih = torch.randn(G, generator=g, dtype=dtype, requires_grad=True)
    b_hh = torch.randn(G, generator=g, dtype=dtype, requires_grad=True)
    w_hr = (0.5 * torch.randn(P, H, generator=g, dtype=dtype)).requires_grad_() if proj else None
    lengths = torch.tensor([6, 2, 4, 6, 3]) if packed else None  # >= 2 rows at every step
    mask = None
    if mask_kind is not None:
        shape = (B, R) if mask_kind == "shared" else (T, B, R)
        mask = torch.bernoulli(torch.full(shape, 0.7, dtype=dtype), generator=g) / 0.7
    bn_d = _bn_tensors(dtype, bn_mode == "train") if bn_mode else None
    bn_f = _clone_bn(bn_d) if bn_mode else None

    y_d, h_d, c_d = direct_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, mask=mask, lengths=lengths,
                                 reverse=reverse, bn=bn_d)
    y_f, h_f, c_f = ops.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, mask=mask, lengths=lengths,
                                   reverse=reverse, norm=_to_recurrent_bn(bn_f) if bn_f else None,
                                   backend=backend)
    for a, b, n in ((y_f, y_d, "y"), (h_f, h_d, "h_n"), (c_f, c_d, "c_n")):
        assert_close(a, b, msg=n)
    wrt_common = [x, h0, c0, w_ih, w_hh, b_ih, b_hh] + ([w_hr] if proj else [])
    extra_d = [bn_d[k] for k in ("gamma_x", "gamma_h", "gamma_c", "beta_c")] if bn_mode else []
    extra_f = [bn_f[k] for k in ("gamma_x", "gamma_h", "gamma_c", "beta_c")] if bn_mode else []
    gw = torch.Generator().manual_seed(5)
    ws = [torch.randn(t.shape, generator=gw, dtype=dtype) for t in (y_d, h_d, c_d)]
    loss_d = sum((t * w).sum() for t, w in zip((y_d, h_d, c_d), ws))
    loss_f = sum((t * w).sum() for t, w in zip((y_f, h_f, c_f), ws))
    g_d = grads(loss_d, wrt_common + extra_d)
    g_f = grads(loss_f, wrt_common + extra_f)
    names = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"] + (["w_hr"] if proj else []) + \
        (["gamma_x", "gamma_h", "gamma_c", "beta_c"] if bn_mode else [])
    for a, b, n in zip(g_f, g_d, names):
        assert_close(a, b, msg=f"grad {n}")
    if bn_mode:
        for k in ("rm_x", "rv_x", "rm_h", "rv_h", "rm_c", "rv_c"):
            assert_close(bn_f[k], bn_d[k], msg=f"running {k}")


@pytest.mark.parametrize("backend", fusedrnn.available_backends("cpu") + (["triton"] if TRITON else []))
def test_gradients_through_final_state_only(backend):
    """Gradients that flow only through h_n / c_n (no loss on y), with every regularizer:
    equal to the reference backend's, and equal to the gradient of the same function with a
    zero weight on y (so nothing leaks from an unused output)."""
    def run(be, y_weight):
        torch.manual_seed(0)
        lstm = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True, batch_norm=True, recurrent_dropout=0.2,
                             variational=True, dtype=torch.float64, backend=be)
        x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(1)  # the same masks
        y, (h_n, c_n) = lstm(x)
        loss = h_n.sum() + c_n.pow(2).sum() + (0 if y_weight is None else (y * y_weight).sum())
        return torch.autograd.grad(loss, [x] + list(lstm.parameters()))

    want = run("reference", None)
    assert want[0].abs().sum() > 0
    for got in (run(backend, None), run(backend, torch.zeros(T, B, 2 * H, dtype=torch.float64))):
        for a, b in zip(got, want):
            assert_close(a, b)


# ---- module-level mask semantics ----------------------------------------------------


class Recorder:
    def __init__(self, monkeypatch):
        self.calls = []
        real = ops.lstm_layer

        def record(x, *args, **kwargs):
            self.calls.append(dict(x=x.detach().clone(), **kwargs))
            return real(x, *args, **kwargs)

        monkeypatch.setattr(ops, "lstm_layer", record)


@pytest.mark.parametrize("variational", [True, False])
def test_recurrent_masks_shared_or_per_step(monkeypatch, variational):
    rec = Recorder(monkeypatch)
    lstm = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3,
                         recurrent_dropout=0.4, variational=variational)
    lstm(torch.randn(T, B, I))
    assert len(rec.calls) == 4
    masks = [c["mask"] for c in rec.calls]
    for m in masks:
        if variational:
            assert m.shape == (B, 3)  # one [B, R] mask for every step of the sequence
        else:
            assert m.shape == (T, B, 3)
            assert not all(torch.equal(m[0], m[t]) for t in range(1, T))
        assert set(torch.unique(m).tolist()) <= {0.0, torch.tensor(1 / 0.6).item()}
    assert not torch.equal(masks[0], masks[1])  # independent per direction / layer
    rec.calls.clear()
    lstm.backend = "native"  # auto would run torch's own LSTM in eval mode: no layer op to inspect
    lstm.eval()(torch.randn(T, B, I))
    assert len(rec.calls) == 4 and all(c["mask"] is None for c in rec.calls)


def test_drop_rate_and_scaling():
    m = ops.recurrent_mask(0.3, 1, 400, 500, torch.empty(0), shared=True)
    frac = (m == 0).float().mean().item()
    assert abs(frac - 0.3) < 0.01
    assert torch.allclose(m[m != 0], torch.tensor(1 / 0.7))


@pytest.mark.parametrize("p", [0.3, 0.05, 0.9])
def test_weight_mask_rate_in_every_lane(p):
    """DropConnect's mask reads four 16-bit lanes of each 64-bit draw, the top one with 15
    random bits: every lane (element index mod 4) drops at the rate, kept values are
    1 / (1 - p), and odd sizes (not a multiple of 4) come out whole."""
    from fusedrnn.ops import dropout as D

    torch.manual_seed(3)
    m = D.weight_mask(p, (1001, 400), torch.empty(0))
    assert m.shape == (1001, 400)
    lanes = (m == 0).double().view(-1, 4).mean(0)
    assert (lanes - p).abs().max().item() < 0.005, lanes
    assert torch.allclose(m[m != 0], torch.tensor(1 / (1 - p)))
    assert D.weight_mask(p, (3, 5), torch.empty(0, dtype=torch.float64)).shape == (3, 5)


@pytest.mark.parametrize("rates", [(0.1, 0.35), (0.0, 0.9)], ids=["0.1-0.35", "0-0.9"])
def test_zoneout_rates_in_every_lane(rates):
    """Training zoneout weights are 0 / 1, 1 at the rate in every lane of the 64-bit words
    they are read from (the flat draw index mod 4; H + R = 202 shifts the lanes row by row),
    the c and h decisions independent of each other; a GRU draws h alone at its rate."""
    from fusedrnn.ops import dropout as D

    torch.manual_seed(3)
    T, B, H = 40, 50, 101
    z = D.zoneout_weights(rates, T, B, H, H, torch.empty(0), training=True)
    lane = (torch.arange(T * B * 2 * H) % 4).view(T, B, 2 * H)
    for w, r, lanes in zip((z.c, z.h), rates, (lane[..., :H], lane[..., H:])):
        assert w.shape == (T, B, H) and set(torch.unique(w).tolist()) <= {0.0, 1.0}
        for k in range(4):
            assert abs(w[lanes == k].mean().item() - r) < 0.01, (r, k)
    assert abs((z.c * z.h).mean().item() - rates[0] * rates[1]) < 0.005
    g = D.zoneout_weights(rates, T, B, H, H, torch.empty(0), training=True, cell=D.CellKind.GRU)
    assert g.c is None and abs(g.h.mean().item() - rates[1]) < 0.005


@pytest.mark.skipif(not fusedrnn.backends.compiled.has_kernel("drop_connect", "CPU"), reason="fusedrnn._C not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.25, 0.7, 0.97])
@pytest.mark.parametrize("shape", [(48, 16), (7, 3)], ids=["48x16", "7x3-odd"])
def test_drop_connect_is_the_mask_product_bit_for_bit(shape, p, dtype):
    """The module's DropConnect (one native pass on the CPU) gives the same weight and the same
    gradient, bit for bit, as weight * weight_mask from the same seed: every lane's threshold,
    the 1 / keep scale in the weight's dtype, a size that is not a multiple of 4, a dropped
    inf, NaN or negative weight (w * 0); and the op passes opcheck."""
    from fusedrnn.ops import dropout as D

    w = torch.randn(shape, dtype=dtype)
    w.view(-1)[:4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])  # w * 0 is NaN, NaN, NaN, -0
    w.requires_grad_()
    g = torch.randn(shape, dtype=dtype)
    g.view(-1)[4] = float("inf")
    torch.manual_seed(5)
    fused = D.drop_connect(p, w)
    (gw_fused,) = torch.autograd.grad(fused, w, g)
    torch.manual_seed(5)
    mask = D.weight_mask(p, shape, w)
    bits = torch.int32 if dtype == torch.float32 else torch.int64  # -0 and NaN payloads compared too
    assert torch.equal(fused.detach().view(bits), (w * mask).detach().view(bits))
    assert torch.equal(gw_fused.view(bits), (g * mask).view(bits))
    assert 0 < (mask == 0).sum() < mask.numel() or shape == (7, 3)
    torch.manual_seed(5)
    words, low, top = D._weight_draw(p, w.numel(), w.device)
    finite = torch.randn(shape, dtype=dtype, requires_grad=True)  # (opcheck compares with NaN != NaN)
    torch.library.opcheck(torch.ops.fusedrnn.drop_connect.default, (finite, words, low, top, 1.0 - p))


def test_masks_are_the_same_in_every_dtype():
    """One seed, one set of masks whatever the model's dtype (drawn in float32, then cast): a
    bf16 model and its float64 reference see the same units dropped, zoned out and DropConnected
    (the GPU tests compare them under one seed; on CUDA, torch draws doubles and floats apart)."""
    from fusedrnn.ops import dropout as D

    def draws(dtype):
        like = torch.empty(0, dtype=dtype)
        torch.manual_seed(11)
        m = D.recurrent_mask(0.3, 5, 4, 6, like, shared=False)
        w = D.weight_mask(0.4, (8, 6), like)
        z = D.zoneout_weights((0.2, 0.1), 5, 4, 6, 6, like, training=True)
        return [t.double() for t in (m, w, z.c, z.h)]

    ref = draws(torch.float64)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for a, b in zip(draws(dtype), ref):
            assert torch.equal(a != 0, b != 0), dtype
            torch.testing.assert_close(a, b, rtol=1e-2, atol=0)  # the 1 / keep scale, rounded to dtype


def test_survival_probability_per_step_vs_shared():
    like = torch.empty(0)
    per_step = ops.recurrent_mask(0.1, 100, 2000, 1000, like, shared=False)
    shared = ops.recurrent_mask(0.1, 100, 2000, 1000, like, shared=True)
    p10 = ops.survival_probability(per_step, 10)
    assert abs(p10 - 0.9 ** 10) < 0.005  # about 0.35
    p100 = ops.survival_probability(per_step, 100)
    assert p100 < 3e-4  # 0.9 ** 100 = 2.7e-5: with 2e6 units, tens survive
    assert abs(ops.survival_probability(shared, 100) - 0.9) < 0.005


def test_emitted_h_is_not_masked():
    """One step from h0 = 0: the recurrent mask has nothing to act on, so training with
    any recurrent dropout emits exactly the unregularized output (no mask on y)."""
    torch.manual_seed(0)
    lstm = fusedrnn.LSTM(I, H, recurrent_dropout=0.9, dtype=torch.float64)
    x = torch.randn(1, B, I, dtype=torch.float64)
    y_train = lstm(x)[0]
    y_eval = lstm.eval()(x)[0]
    assert_close(y_train, y_eval)
    assert (y_train != 0).all()


def test_module_mask_applied_as_direct(monkeypatch):
    rec = Recorder(monkeypatch)
    torch.manual_seed(1)
    lstm = fusedrnn.LSTM(I, H, recurrent_dropout=0.5, variational=True, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    y = lstm(x)[0]
    mask = rec.calls[0]["mask"]
    z = torch.zeros(B, H, dtype=torch.float64)
    y_d = direct_layer(x, z, z, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0,
                       mask=mask)[0]
    assert_close(y, y_d)


@pytest.mark.parametrize("variational", [True, False])
def test_between_layer_dropout(monkeypatch, variational):
    rec = Recorder(monkeypatch)
    lstm = fusedrnn.LSTM(I, H, num_layers=2, dropout=0.5, variational=variational, backend="native")
    lstm(torch.randn(T, B, I))
    x1 = rec.calls[1]["x"]  # input of layer 1 = dropped output of layer 0
    zeros = x1 == 0
    same_over_time = all(torch.equal(zeros[0], zeros[t]) for t in range(1, T))
    assert same_over_time == variational
    assert zeros.any()


def test_same_seed_same_result():
    lstm = fusedrnn.LSTM(I, H, num_layers=2, dropout=0.3, recurrent_dropout=0.3, batch_norm=True)
    x = torch.randn(T, B, I)
    torch.manual_seed(5)
    a = lstm(x)[0]
    torch.manual_seed(5)
    b = lstm(x)[0]
    assert torch.equal(a, b)


# ---- module-level batch norm ----------------------------------------------------------


def _bn_dict_of(module, suffix, training, momentum, eps):
    gm = lambda n: getattr(module, n + suffix)  # noqa: E731
    return dict(gamma_x=gm("bn_x_weight"), gamma_h=gm("bn_h_weight"), gamma_c=gm("bn_c_weight"),
                beta_c=gm("bn_c_bias"), rm_x=gm("bn_x_running_mean").clone(),
                rv_x=gm("bn_x_running_var").clone(), rm_h=gm("bn_h_running_mean").clone(),
                rv_h=gm("bn_h_running_var").clone(), rm_c=gm("bn_c_running_mean").clone(),
                rv_c=gm("bn_c_running_var").clone(), training=training, momentum=momentum, eps=eps)


@pytest.mark.parametrize("packed", [False, True])
def test_module_batch_norm_train_then_eval(packed):
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(2)
    lstm = fusedrnn.LSTM(I, H, bidirectional=True, batch_norm=True, bn_max_steps=S, bn_momentum=0.3,
                         dtype=torch.float64)
    assert torch.equal(lstm.bn_x_weight_l0, torch.full((G,), 0.1, dtype=torch.float64))
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([6, 6, 4, 3, 2]) if packed else None
    for training in (True, False):
        lstm.train(training)
        expect_bn = {sfx: _bn_dict_of(lstm, sfx, training, 0.3, 1e-5) for sfx in ("_l0", "_l0_reverse")}
        inp = pack_padded_sequence(x, lengths) if packed else x
        out, (h_n, c_n) = lstm(inp)
        z = torch.zeros(B, H, dtype=torch.float64)
        ys = []
        for d, sfx in enumerate(("_l0", "_l0_reverse")):
            w = [getattr(lstm, f"{n}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            y, hn, cn = direct_layer(x, z, z, *w, lengths=lengths, reverse=d == 1, bn=expect_bn[sfx])
            ys.append(y)
            assert_close(h_n[d], hn, msg=f"h_n{sfx}")
            assert_close(c_n[d], cn, msg=f"c_n{sfx}")
            for k, buf in (("rm_x", "bn_x_running_mean"), ("rv_h", "bn_h_running_var"), ("rv_c", "bn_c_running_var")):
                assert_close(getattr(lstm, buf + sfx), expect_bn[sfx][k], msg=f"{buf}{sfx}")
        y = torch.cat(ys, 2)
        if packed:
            y = pack_padded_sequence(y, lengths).data
            out = out.data
        assert_close(out, y, msg=f"output training={training}")


def test_batch_norm_eval_clamps_to_last_slot():
    torch.manual_seed(0)
    lstm = fusedrnn.LSTM(I, H, batch_norm=True, bn_max_steps=2).eval()
    with torch.no_grad():
        lstm.bn_h_running_mean_l0.normal_()
        lstm.bn_h_running_mean_l0[1] = 5.0
    x = torch.randn(T, B, I)
    y = lstm(x)[0]
    # Slots beyond the last reuse it: making slot 1 equal to a hypothetical slot 2..T-1
    # changes nothing, and changing slot 1 changes every step from 1 on.
    with torch.no_grad():
        lstm.bn_h_running_mean_l0[1] = -5.0
    y2 = lstm(x)[0]
    assert torch.equal(y[0], y2[0])
    assert all(not torch.allclose(y[t], y2[t]) for t in range(1, T))
