"""The compiled fusedrnn:: ops: opcheck on every sample, gradcheck in float64, and the
poisoned-output check of the native kernels."""

import pytest
import torch

from fusedrnn.backends import compiled
from fusedrnn.core import schema
from helpers import native_against_reference

pytestmark = pytest.mark.skipif(compiled.LOAD_ERROR is not None, reason="fusedrnn._C not built")


def _cell_samples(device="cpu"):
    out = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for B, H in ((1, 1), (3, 5), (7, 16)):
            gates = torch.randn(B, 4 * H, dtype=dtype, device=device, requires_grad=dtype != torch.bfloat16)
            cx = torch.randn(B, H, dtype=dtype, device=device, requires_grad=dtype != torch.bfloat16)
            out.append((gates, cx))
    return out


@pytest.mark.parametrize("i", range(9))
def test_opcheck_cell_forward(i):
    gates, cx = _cell_samples()[i]
    torch.library.opcheck(torch.ops.fusedrnn.lstm_cell_forward.default, (gates, cx))


def test_opcheck_cell_backward():
    gates, cx = torch.randn(3, 20, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    hy, cy, act = torch.ops.fusedrnn.lstm_cell_forward(gates, cx)
    args = (torch.randn_like(hy), torch.randn_like(cy), act, cx, cy)
    torch.library.opcheck(torch.ops.fusedrnn.lstm_cell_backward.default, args)


def test_no_double_backward():
    gates = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    cx = torch.randn(3, 5, dtype=torch.float64)
    hy, _, _ = torch.ops.fusedrnn.lstm_cell_forward(gates, cx)
    (g,) = torch.autograd.grad(hy.sum(), gates, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_gradcheck_cell():
    gates = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    cx = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def f(g, c):
        hy, cy, _ = torch.ops.fusedrnn.lstm_cell_forward(g, c)
        return hy, cy

    assert torch.autograd.gradcheck(f, (gates, cx))


def test_cell_matches_reference_math_and_writes_everything():
    from fusedrnn.backends.reference import BACKEND as ref

    gates, cx = torch.randn(6, 4 * 9, dtype=torch.float64), torch.randn(6, 9, dtype=torch.float64)
    hy, cy, act = torch.ops.fusedrnn.lstm_cell_forward(gates, cx)
    for t in (hy, cy, act):
        assert not torch.isnan(t).any()  # outputs are NaN-poisoned before the kernel runs
    hr, cr = ref.cell(gates, cx)
    torch.testing.assert_close(hy, hr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cy, cr, rtol=1e-12, atol=1e-12)


def test_bad_arguments_raise():
    with pytest.raises(RuntimeError, match="gates must have shape"):
        torch.ops.fusedrnn.lstm_cell_forward(torch.randn(3, 10), torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.fusedrnn.lstm_cell_forward(torch.randn(3, 20), torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="float32, float64"):
        torch.ops.fusedrnn.lstm_cell_forward(torch.ones(3, 20, dtype=torch.int32), torch.ones(3, 5, dtype=torch.int32))


def test_non_contiguous_inputs():
    base = torch.randn(5, 40, dtype=torch.float64)
    gates = base[:, ::2]  # [5, 20], strided
    cx = torch.randn(5, 10, dtype=torch.float64)[:, ::2]
    hy, cy, _ = torch.ops.fusedrnn.lstm_cell_forward(gates, cx)
    hy2, cy2, _ = torch.ops.fusedrnn.lstm_cell_forward(gates.contiguous(), cx.contiguous())
    assert torch.equal(hy, hy2) and torch.equal(cy, cy2)


# ---- the layer recurrence op ---------------------------------------------------------------

LAYER_CASES = [
    dict(), dict(mask="shared"), dict(mask="per_step"), dict(proj=True), dict(reverse=True),
    dict(lengths=True), dict(lengths=True, reverse=True), dict(bn="train"), dict(bn="eval"),
    dict(bn="train", mask="shared", proj=True, lengths=True, reverse=True),
    dict(bn="eval", mask="per_step", proj=True, lengths=True),
    dict(zoneout=True), dict(zoneout="eval", proj=True, lengths=True, reverse=True), dict(bn="layer"),
    dict(bn="layer", zoneout=True, mask="per_step", proj=True, lengths=True, reverse=True),
    dict(bn="train", zoneout=True, lengths=True),
]


def _layer_args(case, dtype=torch.float64, T=4, B=3, H=3, P=2, S=3, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    R = P if case.get("proj") else H
    G = 4 * H
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    xp, h0, c0, w_hh = r(T, B, G), r(B, R), r(B, H), 0.5 * r(G, R)
    w_hr = 0.5 * r(P, H) if case.get("proj") else None
    mask = None
    if case.get("mask"):
        shape = (B, R) if case["mask"] == "shared" else (T, B, R)
        mask = torch.bernoulli(torch.full(shape, 0.7, dtype=dtype), generator=g) / 0.7
    lengths = torch.tensor([4, 2, 3]) if case.get("lengths") else None
    bn = case.get("bn")
    bn_w = (1 + 0.1 * r(G), 1 + 0.1 * r(H), 0.1 * r(H)) if bn else (None,) * 3
    running = (0.1 * r(S, G), 0.5 + torch.rand(S, G, generator=g, dtype=dtype), 0.1 * r(S, H),
               0.5 + torch.rand(S, H, generator=g, dtype=dtype)) if bn == "eval" else (None,) * 4
    diff = [xp, h0, c0, w_hh] + ([w_hr] if w_hr is not None else []) + [t for t in bn_w if t is not None]
    for t in diff:
        t.requires_grad_(requires_grad)
    mask_mode = {None: 0, "shared": 1, "per_step": 2}[case.get("mask")]
    norm_mode = {None: 0, "train": 1, "eval": 2, "layer": 3}[bn]
    zoneout = (None, None)
    if case.get("zoneout") == "eval":  # the rates, as expanded scalars
        zoneout = (torch.full((1, 1, 1), 0.3, dtype=dtype).expand(T, B, H),
                   torch.full((1, 1, 1), 0.6, dtype=dtype).expand(T, B, R))
    elif case.get("zoneout"):
        zoneout = (torch.bernoulli(torch.full((T, B, H), 0.4, dtype=dtype), generator=g),
                   torch.bernoulli(torch.full((T, B, R), 0.4, dtype=dtype), generator=g))
    return (xp, h0, c0, w_hh, w_hr, mask, mask_mode, lengths, bool(case.get("reverse")), norm_mode, *bn_w,
            *running, 1, 1e-3, *zoneout, True), diff


def _params(args):
    """The schema's PARAMS of forward args (what the backward takes after the gradients)."""
    return args[3:3 + len(schema.PARAMS)]


def _layer_id(c):
    return "-".join(f"{k}={v}" for k, v in c.items()) or "plain"


@pytest.mark.parametrize("case", LAYER_CASES, ids=_layer_id)
def test_opcheck_layer_forward(case):
    args, _ = _layer_args(case)
    torch.library.opcheck(torch.ops.fusedrnn.lstm_layer_forward.default, args)


def test_opcheck_layer_backward():
    args, _ = _layer_args(dict(bn="train", mask="shared", proj=True, lengths=True))
    with torch.no_grad():
        out = torch.ops.fusedrnn.lstm_layer_forward(*args)
    y, h_n, c_n = out[:3]
    bargs = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), *_params(args), *out[3:])
    bargs = tuple(a.detach() if torch.is_tensor(a) else a for a in bargs)
    torch.library.opcheck(torch.ops.fusedrnn.lstm_layer_backward.default, bargs)


def _gradcheck_layer_forward(args, diff):
    """gradcheck of the layer forward's y, h_n, c_n at the forward arguments ``args`` in every
    differentiable tensor (``diff``, in the order of the arguments)."""
    names = ["xp", "h0", "c0", *schema.PARAMS, "save"]
    a = dict(zip(names, args))

    def f(*ts):
        b, it = dict(a), iter(ts)
        for k in ("xp", "h0", "c0", "w_hh", "w_hr", "norm_h_weight", "norm_c_weight", "norm_c_bias"):
            if b[k] is not None:
                b[k] = next(it)
        return torch.ops.fusedrnn.lstm_layer_forward(*(b[k] for k in names))[:3]

    assert torch.autograd.gradcheck(f, tuple(diff), atol=1e-7)


@pytest.mark.parametrize("case", LAYER_CASES, ids=_layer_id)
def test_gradcheck_layer(case):
    _gradcheck_layer_forward(*_layer_args(case))


def test_layer_without_workspace_matches_and_refuses_backward():
    args, _ = _layer_args(dict(bn="train", proj=True, lengths=True, reverse=True), requires_grad=False)
    full = torch.ops.fusedrnn.lstm_layer_forward(*args)
    lean = torch.ops.fusedrnn.lstm_layer_forward(*args[:-1], False)
    for a, b in zip(full[:5], lean[:5]):
        assert torch.equal(a, b)
    assert lean[6].shape[0] == 1 and lean[7].shape[0] == 2  # rolling workspace


def test_layer_outputs_fully_written():
    """Outputs are NaN-poisoned before the kernel (FUSEDRNN_POISON_OUTPUTS=1); every element
    of y (zeros past each length), h_n, c_n and the statistics must be written."""
    for case in LAYER_CASES:
        args, _ = _layer_args(case, requires_grad=False)
        out = torch.ops.fusedrnn.lstm_layer_forward(*args)
        for t in out:
            assert not torch.isnan(t).any(), case
        grads = torch.ops.fusedrnn.lstm_layer_backward(
            torch.randn_like(out[0]), torch.randn_like(out[1]), torch.randn_like(out[2]), *_params(args), *out[3:])
        for t in grads:
            assert not torch.isnan(t).any(), case


def test_layer_bad_arguments():
    args, _ = _layer_args(dict(), requires_grad=False)
    bad_h0 = list(args)
    bad_h0[1] = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="h0 must have shape"):
        torch.ops.fusedrnn.lstm_layer_forward(*bad_h0)
    bad_len = list(args)
    bad_len[7] = torch.tensor([9, 1, 1])
    with pytest.raises(RuntimeError, match="lengths must lie in"):
        torch.ops.fusedrnn.lstm_layer_forward(*bad_len)
    bad_mask = list(args)
    bad_mask[5], bad_mask[6] = torch.ones(2, 3, dtype=torch.float64), 1
    with pytest.raises(RuntimeError, match="mask must have shape"):
        torch.ops.fusedrnn.lstm_layer_forward(*bad_mask)
    bad_mode = list(args)
    bad_mode[5], bad_mode[6] = torch.ones(3, 3, dtype=torch.float64), 2  # a shared mask called per step
    with pytest.raises(RuntimeError, match="mask must have shape"):
        torch.ops.fusedrnn.lstm_layer_forward(*bad_mode)
    no_mask = list(args)
    no_mask[6] = 1
    with pytest.raises(RuntimeError, match="needs a mask"):
        torch.ops.fusedrnn.lstm_layer_forward(*no_mask)
    bad_norm = list(args)
    bad_norm[9] = 4
    with pytest.raises(RuntimeError, match="norm_mode must be"):
        torch.ops.fusedrnn.lstm_layer_forward(*bad_norm)
    bad_norm[9] = 3  # layer norm without its gains
    with pytest.raises(RuntimeError, match="go with batch or layer norm"):
        torch.ops.fusedrnn.lstm_layer_forward(*bad_norm)
    bad_zoneout = list(args)
    bad_zoneout[19] = torch.zeros(4, 3, 3, dtype=torch.float64)  # zoneout_c without zoneout_h
    with pytest.raises(RuntimeError, match="zoneout_c and zoneout_h go together"):
        torch.ops.fusedrnn.lstm_layer_forward(*bad_zoneout)
    bad_zoneout[20] = torch.zeros(4, 3, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="zoneout_h must have shape"):
        torch.ops.fusedrnn.lstm_layer_forward(*bad_zoneout)
    bad_dtype = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    bad_dtype[3] = args[3]
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.fusedrnn.lstm_layer_forward(*bad_dtype)


# ---- the recompute mode (save_workspace 2) ---------------------------------------------------

RECOMPUTE_CASES = [dict(bn="train", lengths=True, reverse=True), dict(bn="eval", proj=True, mask="per_step"),
                   dict(bn="layer", zoneout=True, mask="shared")]


@pytest.mark.parametrize("case", RECOMPUTE_CASES, ids=_layer_id)
@pytest.mark.parametrize("T,B", [(4, 3), (40, 32)], ids=["one-chunk", "three-chunks"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32-fused-steps"])
def test_recompute_mode_leaves_x_hat_out_and_the_backward_rebuilds_it(case, T, B, dtype):
    """save_workspace=2: the forward returns ws_hh_hat empty and everything else as with 1;
    the backward from that workspace equals the one from the saved x_hat, over one chunk of
    steps and over three (the backward's ring holds 16 steps at B = 32), on the fused steps
    (float32 without a projection) and the per-step GEMMs."""
    args, _ = _layer_args(case, dtype=dtype, T=T, B=B, requires_grad=False)
    if case.get("lengths"):  # lengths spread over 1 .. T
        args = (*args[:7], 1 + torch.arange(B) * 7 % T, *args[8:])
    full = torch.ops.fusedrnn.lstm_layer_forward(*args)
    lean = torch.ops.fusedrnn.lstm_layer_forward(*args[:-1], schema.SAVE_RECOMPUTE_NORM)
    assert lean[8].shape == (0, B, full[8].shape[2]) and full[8].shape[0] == T
    for i in (0, 1, 2, 3, 4, 5, 6, 7, 9):
        assert torch.equal(full[i], lean[i]), schema.FORWARD_OUTPUTS[i]
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in full[:3]]
    saved = torch.ops.fusedrnn.lstm_layer_backward(*grads, *_params(args), *full[3:])
    rebuilt = torch.ops.fusedrnn.lstm_layer_backward(*grads, *_params(args), *lean[3:])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(saved, rebuilt):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", RECOMPUTE_CASES, ids=_layer_id)
def test_opcheck_and_gradcheck_recompute_mode(case):
    args, diff = _layer_args(case)
    args = (*args[:-1], schema.SAVE_RECOMPUTE_NORM)
    torch.library.opcheck(torch.ops.fusedrnn.lstm_layer_forward.default, args)
    with torch.no_grad():
        out = torch.ops.fusedrnn.lstm_layer_forward(*args)
    bargs = (torch.randn_like(out[0]), torch.randn_like(out[1]), torch.randn_like(out[2]), *_params(args), *out[3:])
    torch.library.opcheck(torch.ops.fusedrnn.lstm_layer_backward.default,
                          tuple(a.detach() if torch.is_tensor(a) else a for a in bargs))
    _gradcheck_layer_forward(args, diff)


def test_recompute_mode_bad_workspace():
    args, _ = _layer_args(dict(bn="train"), requires_grad=False)
    with pytest.raises(RuntimeError, match="save_workspace must be 0"):
        torch.ops.fusedrnn.lstm_layer_forward(*args[:-1], 3)
    out = torch.ops.fusedrnn.lstm_layer_forward(*args)
    grads = [torch.ones_like(t) for t in out[:3]]
    ws = list(out[3:])
    ws[5] = ws[5][1:]  # x_hat of some steps only
    with pytest.raises(RuntimeError, match="ws_hh_hat must hold every step's x_hat"):
        torch.ops.fusedrnn.lstm_layer_backward(*grads, *_params(args), *ws)


# ---- per-step batch norm (BN_x) --------------------------------------------------------------

BN_CASES = [(t, l, r, b) for t in (True, False) for l in (False, True) for r in (False, True) for b in (True, False)]


@pytest.mark.parametrize("training,packed,reverse,bias", BN_CASES,
                         ids=[f"train{int(t)}-len{int(l)}-rev{int(r)}-bias{int(b)}" for t, l, r, b in BN_CASES])
def test_batch_norm_steps_matches_python(training, packed, reverse, bias):
    from fusedrnn.backends.reference import batch_norm_steps
    from fusedrnn.core.contract import active_rows, reverse_sequences
    g = torch.Generator().manual_seed(0)
    T, B, F, S = 5, 4, 6, 3
    v = torch.randn(T, B, F, generator=g, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.1 * torch.randn(F, generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.randn(F, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    lengths = torch.tensor([5, 3, 2, 5]) if packed else None
    rm, rv = torch.randn(S, F, dtype=torch.float64), 0.5 + torch.rand(S, F, dtype=torch.float64)
    slots = torch.arange(T).clamp(max=S - 1)
    em, ev = (None, None) if training else (rm[slots], rv[slots])
    out, mean, var = torch.ops.fusedrnn.batch_norm_steps_forward(v, w, b, lengths, reverse, em, ev, training, 1e-3)
    xs = reverse_sequences(v, lengths) if reverse else v
    ref, rmean, rvar = batch_norm_steps(xs, active_rows(T, lengths, v.device), w, None, rm, rv, slots, training, 1e-3)
    ref = reverse_sequences(ref, lengths) if reverse else ref
    ref = ref if b is None else ref + b
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    if training:
        torch.testing.assert_close(mean, rmean)
        torch.testing.assert_close(var, rvar)
    gy = torch.randn(T, B, F, generator=g, dtype=torch.float64)
    wrt = [v, w] + ([b] if bias else [])
    g1 = torch.autograd.grad((out * gy).sum(), wrt)
    g2 = torch.autograd.grad((ref * gy).sum(), wrt)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_opcheck_batch_norm_steps():
    v = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    for args in ((v, w, b, None, False, None, None, True, 1e-5),
                 (v, w, None, torch.tensor([4, 2, 3]), True, None, None, True, 1e-5),
                 (v, w, b, None, True, torch.randn(4, 5, dtype=torch.float64),
                  torch.rand(4, 5, dtype=torch.float64) + 0.5, False, 1e-5)):
        torch.library.opcheck(torch.ops.fusedrnn.batch_norm_steps_forward.default, args)
    assert torch.autograd.gradcheck(
        lambda v, w, b: torch.ops.fusedrnn.batch_norm_steps_forward(v, w, b, torch.tensor([4, 2, 3]), True,
                                                                    None, None, True, 1e-5)[0], (v, w, b))


def test_shared_gate_math_accuracy_and_special_values():
    """csrc/gates.h (the gate math the CUDA kernels compile too): the CPU build's
    vectorised exp / tanh stay within fp32 rounding of float64 over the whole range, and
    NaN / +-Inf pre-activations behave like torch's sigmoid / tanh."""
    x = torch.linspace(-90, 90, 200001, dtype=torch.float64)
    gates = torch.stack([x, x, x, x], 1).repeat(1, 1)  # i = f = g = o = x, H = 1
    cx = torch.zeros(x.numel(), 1, dtype=torch.float64)
    hy32, cy32, act32 = torch.ops.fusedrnn.lstm_cell_forward(gates.float(), cx.float())
    s, t = torch.sigmoid(x.float().double()), torch.tanh(x.float().double())
    assert (act32[:, 0].double() - s).abs().max() < 2e-7
    assert (act32[:, 2].double() - t).abs().max() < 2e-7
    ref_c = s * t
    assert (cy32[:, 0].double() - ref_c).abs().max() < 4e-7
    special = torch.tensor([[float("nan")] * 4, [float("inf")] * 4, [-float("inf")] * 4, [0.0] * 4])
    hy, cy, act = torch.ops.fusedrnn.lstm_cell_forward(special, torch.zeros(4, 1))
    assert torch.isnan(hy[0]).all() and torch.isnan(cy[0]).all()
    torch.testing.assert_close(act[1], torch.ones(4))  # sigmoid(inf) = tanh(inf) = 1
    torch.testing.assert_close(act[2], torch.tensor([0.0, 0.0, -1.0, 0.0]), atol=1e-30, rtol=0)
    torch.testing.assert_close(act[3], torch.tensor([0.5, 0.5, 0.0, 0.5]))


# ---- fusedrnn::linear (the native input projection) and the CPU GEMM paths --------------------

LINEAR_CASES = [(torch.float32, (3, 5, 8), 12, True), (torch.float64, (4, 7), 20, False),
                (torch.float32, (64, 32, 256), 1024, True), (torch.float32, (0, 2, 4), 8, True),
                (torch.float32, (40, 70, 600), 260, True), (torch.float32, (2900, 520), 100, False)]


@pytest.mark.parametrize("dtype,xshape,G,bias", LINEAR_CASES,
                         ids=[f"{str(d)[6:]}-x{'x'.join(map(str, s))}-G{g}-b{int(b)}" for d, s, g, b in LINEAR_CASES])
def test_linear_op(dtype, xshape, G, bias):
    """opcheck, the values and gradients against F.linear in float64; the large cases run the
    oneDNN path (weight reorder forward, GEMMs on transposed views backward) and, for K > 512,
    the register tile's forward (row blocks, a last partial one, padded column groups)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*xshape, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(G, xshape[-1], generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(G, generator=g, dtype=dtype, requires_grad=True) if bias else None
    torch.library.opcheck(torch.ops.fusedrnn.linear.default, (x, w, b))
    y = torch.ops.fusedrnn.linear(x, w, b)
    gy = torch.randn(y.shape, generator=g, dtype=dtype)
    got = torch.autograd.grad(y, [x, w] + ([b] if bias else []), gy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    y64 = torch.nn.functional.linear(x64, w64, b64)
    want = torch.autograd.grad(y64, [x64, w64] + ([b64] if bias else []), gy.double())
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y.double(), y64, **tol)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, **tol)
    # x without a gradient: the backward skips dX (an empty grad_x) and keeps dW, db
    bargs = (gy, x.detach(), w.detach(), bias, False)
    torch.library.opcheck(torch.ops.fusedrnn.linear_backward.default, bargs)
    gx, gw, _ = torch.ops.fusedrnn.linear_backward(*bargs)
    assert gx.numel() == 0
    torch.testing.assert_close(gw.double(), want[1], **tol)
    (gw2,) = torch.autograd.grad(torch.ops.fusedrnn.linear(x.detach(), w, b), [w], gy)
    torch.testing.assert_close(gw2.double(), want[1], **tol)


@pytest.mark.parametrize("M,K,N", [(800, 256, 1024), (1000, 600, 512)], ids=["onednn", "tile"])
def test_linear_keeps_the_packed_weight_only_while_it_is_unchanged(M, K, N):
    """Where no gradient reaches the weight (no_grad, or a frozen weight) the forward reuses the
    weight's packed form (oneDNN's reorder; the register tile's panels for K > 512) across calls.
    Each result equals, bit for bit, the one from a weight that needs a gradient (packed afresh):
    after writes that bump no version counter (through .data, through numpy, the last element
    only), with two weights alternating, and for a frozen weight under grad mode."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K ** 0.5
    b = torch.randn(N, generator=g)
    other = torch.randn(N, K, generator=g) / K ** 0.5

    def fresh(weight):  # a weight that needs a gradient: packed on this call
        return torch.ops.fusedrnn.linear(x, weight.detach().clone().requires_grad_(), b).detach()

    def kept(weight):
        with torch.no_grad():
            return torch.ops.fusedrnn.linear(x, weight, b)

    y0 = kept(w)
    assert torch.equal(y0, fresh(w)) and torch.equal(kept(w), y0)
    assert torch.equal(kept(other), fresh(other)) and torch.equal(kept(w), y0)  # two entries
    w.data[0, 0] += 1.0
    y1 = kept(w)
    assert not torch.equal(y1, y0) and torch.equal(y1, fresh(w))
    w.numpy()[N - 1, K - 1] = 3.0
    y2 = kept(w)
    assert not torch.equal(y2, y1) and torch.equal(y2, fresh(w))
    xg = x.clone().requires_grad_()  # grad mode, a frozen weight
    w.requires_grad_(False)
    y3 = torch.ops.fusedrnn.linear(xg, w, b)
    assert torch.equal(y3.detach(), y2) and torch.equal(torch.ops.fusedrnn.linear(xg, w, b).detach(), y2)


def test_regularized_inference_follows_weight_writes_that_bump_no_version():
    """The default construction in eval (layer norm: the native kernel runs in inference too),
    whose input projection keeps W_ih's packed form across no_grad calls: after a write through
    .data and one through numpy (the last element), each output is the one computed with grad
    mode on (the weight packed afresh), bit for bit."""
    import fusedrnn

    torch.manual_seed(0)
    m = fusedrnn.LSTM(256, 128, layer_norm=True).eval()
    x = torch.randn(50, 16, 256)  # the projection 800 x 256 x 512: oneDNN on a reordered weight

    def kept():
        with torch.no_grad():
            return m(x)[0]

    def fresh():
        return m(x)[0].detach()

    y0 = kept()
    assert torch.equal(kept(), y0) and torch.equal(fresh(), y0)
    m.weight_ih_l0.data.mul_(0.5)
    y1 = kept()
    assert not torch.equal(y1, y0) and torch.equal(y1, fresh())
    m.weight_ih_l0.detach().numpy()[-1, -1] += 1.0
    y2 = kept()
    assert not torch.equal(y2, y1) and torch.equal(y2, fresh())


@pytest.mark.parametrize("B,H,T", [(1, 40, 9), (5, 36, 6), (16, 24, 12), (17, 40, 5), (40, 130, 9), (4, 8, 3)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("path", ["", "mkl", "mm"], ids=["best", "mkl", "mm"])
def test_gemm_paths_agree_with_float64(B, H, T, path, monkeypatch):
    """Each float32 GEMM path of the layer (FUSEDRNN_CPU_GEMM: the small-row panel kernel up
    to 16 rows, oneDNN's reordered weight, MKL's packed GEMM, at::mm; chosen by rows, weight
    size and steps) gives the float64 result, forward and backward, with BN (the chunked
    dW_hh accumulation) and without."""
    monkeypatch.setenv("FUSEDRNN_CPU_GEMM", path)
    from fusedrnn import ops
    for bn in (False, True):
        g = torch.Generator().manual_seed(B * 100 + H)
        d = dict(xp=torch.randn(T, B, 4 * H, generator=g), h0=torch.randn(B, H, generator=g) * 0.5,
                 c0=torch.randn(B, H, generator=g) * 0.5, w=torch.randn(4 * H, H, generator=g) / H ** 0.5)
        res = []
        for dt in (torch.float32, torch.float64):
            t = {k: v.to(dt).requires_grad_() for k, v in d.items()}
            rbn = None
            if bn and B > 1:
                rbn = ops.RecurrentBN(weight_x=None, weight_h=torch.full((4 * H,), 0.5, dtype=dt, requires_grad=True),
                                      weight_c=torch.ones(H, dtype=dt), bias_c=torch.zeros(H, dtype=dt),
                                      running_mean_x=None, running_var_x=None,
                                      running_mean_h=torch.zeros(T, 4 * H, dtype=dt),
                                      running_var_h=torch.ones(T, 4 * H, dtype=dt),
                                      running_mean_c=torch.zeros(T, H, dtype=dt), running_var_c=torch.ones(T, H, dtype=dt),
                                      training=True, momentum=0.1, eps=1e-5)
            y, h, c = ops.lstm_recurrence(t["xp"], t["h0"], t["c0"], t["w"], norm=rbn, backend="native")
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dt)
            grads = torch.autograd.grad((y * gy).sum() + h.sum() + c.sum(), [t["xp"], t["h0"], t["c0"], t["w"]])
            res.append([y, h, c, *grads])
        for a, e in zip(*res):
            torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=2e-4)


FUSED_CASES = [dict(), dict(mask="shared"), dict(mask="per_step", zoneout=True), dict(zoneout="eval", reverse=True),
               dict(lengths=True, mask="per_step"), dict(lengths=True, reverse=True, zoneout=True), dict(bn="train"),
               dict(bn="eval", mask="per_step", reverse=True), dict(bn="train", lengths=True, zoneout=True, mask="shared"),
               dict(bn="layer"), dict(bn="layer", zoneout=True, mask="per_step", lengths=True, reverse=True)]


@pytest.mark.parametrize("B,H", [(7, 20), (13, 16), (1, 33), (4, 72), (32, 72)], ids=lambda v: str(v))
@pytest.mark.parametrize("case", FUSED_CASES, ids=_layer_id)
def test_fused_step_matches_float64(case, B, H, two_threads, monkeypatch):
    """The float32 fused steps against the float64 op, by the float32 rule: each output's error
    at most twice that of the unfused op on the library GEMMs (FUSEDRNN_CPU_GEMM=mkl), plus 32
    ulps of its scale (batch norm over 6 or 7 rows amplifies roundings: either path's gradient
    error is 2-5x the other's, case by case).
    - The forward's (GEMM tile + gates, zoneout, finished rows and the next step's masked
      operand in its epilogue; row tiles of up to 6, unit blocks of 16 with a partial last one):
      y, h_n, c_n, and without the workspace the same outputs bit for bit.
    - The backward's (gate gradients of each thread's units, then the tile over them with W_hh,
      the mask and zoneout in its epilogue; groups of 64 columns with a partial last one): the
      gradients of xp, h0, c0, W_hh and the norm's parameters.
    - Batch norm: per unit block after its tiles, the statistics in training (compared too) or
      the running ones in eval.  Layer norm: the unfused op's row kernels after the step's
      products, the parameter gradients summed per thread; at B >= 7 the rows split between
      the threads for the whole step, at B = 4 the products split the unit blocks and the rows
      the row kernels, a barrier after each.
    B = 4 and B = 32 with H = 72 run in one parallel region on two threads (the smaller ones on
    the calling thread), B = 32 over T = 20 steps (gradients grow to ~1e3 with a mask): with lengths or
    reverse the backward's ring of 16 steps takes two chunks."""
    T = 20 if B == 32 else 6
    args64, _ = _layer_args(case, T=T, B=B, H=H, requires_grad=False)
    args64 = list(args64)
    if case.get("lengths"):
        args64[7] = torch.tensor([T if b % 3 == 0 else 1 + (b * 5) % T for b in range(B)])
    args32 = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args64]
    out64 = torch.ops.fusedrnn.lstm_layer_forward(*args64)
    g = torch.Generator().manual_seed(1)
    grads_in = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in out64[:3]]
    g64 = torch.ops.fusedrnn.lstm_layer_backward(*grads_in, *_params(args64), *out64[3:])

    def run32():
        out = torch.ops.fusedrnn.lstm_layer_forward(*args32)
        grads = torch.ops.fusedrnn.lstm_layer_backward(*[t.float() for t in grads_in], *_params(args32), *out[3:])
        return list(out[:5]) + list(grads)  # y, h_n, c_n, the norm's statistics; every gradient

    fused = run32()
    lean = torch.ops.fusedrnn.lstm_layer_forward(*args32[:-1], False)
    for a, c in zip(fused[:3], lean[:3]):
        assert torch.equal(a, c)
    monkeypatch.setenv("FUSEDRNN_CPU_GEMM", "mkl")
    lib = run32()
    names = ("y", "h_n", "c_n", "h_stats", "c_stats", "d_xp", "d_h0", "d_c0", "d_w_hh", "d_w_hr", "d_gamma_h",
             "d_gamma_c", "d_beta_c")
    for name, a, l, b in zip(names, fused, lib, list(out64[:5]) + list(g64)):
        if b.numel() == 0:
            continue
        err, err_lib = ((t.double() - b).abs().max().item() for t in (a, l))
        assert err <= 2 * err_lib + 4e-6 * b.abs().max().item(), (name, err, err_lib)


def test_layer_norm_at_small_batch_in_third_party_training(two_threads):
    """B = 4 on two threads, fewer row tiles than threads: the fused steps split the products
    by unit blocks and the row kernels by rows, a barrier after each.  A script builds
    torch.nn.LSTM under fusedrnn.patch (the default backend) and its optimizer first; over two
    training steps the outputs and gradients are the float64 reference backend's within 1e-5
    of each tensor's largest value (gradients reach ~300 here; one thread's error is the same,
    ~2e-6 of it)."""
    import fusedrnn

    torch.manual_seed(0)
    with fusedrnn.patch(layer_norm=True, zoneout=(0.3, 0.2)):
        m = torch.nn.LSTM(8, 72)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ref = fusedrnn.LSTM(8, 72, layer_norm=True, zoneout=(0.3, 0.2), backend="reference", dtype=torch.float64)
    x = torch.randn(12, 4, 8)
    for step in range(2):
        ref.load_state_dict(m.state_dict())
        results = []
        for mod, dt in ((m, torch.float32), (ref, torch.float64)):
            torch.manual_seed(10 + step)  # the same zoneout draws
            y, (h, c) = mod(x.to(dt))
            mod.zero_grad()
            (y.double().sin().sum() + h.double().sum() + c.double().cos().sum()).backward()
            results.append([y, h, c, *(p.grad for p in mod.parameters())])
        for a, b in zip(*results):  # float32 against float64, relative to each tensor's scale
            assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max(), (step, a.shape)
        opt.step()


THREAD_OPTIONS = [dict(), dict(recurrent_dropout=0.3, variational=True, batch_norm=True),
                  dict(layer_norm=True, zoneout=(0.3, 0.2)), dict(proj_size=24, zoneout=0.2)]
THREAD_IDS = ["plain", "v+bn", "ln+zoneout", "proj+zoneout"]


def _native_run(options, dtype):
    import fusedrnn

    return native_against_reference(fusedrnn.LSTM, options, dtype, 32, 64)


@pytest.mark.parametrize("options", THREAD_OPTIONS, ids=THREAD_IDS)
def test_native_with_two_threads_matches_reference(two_threads, options):
    """float64, two threads: the threaded row and unit splits give the reference's results."""
    ours, ref = _native_run(options, torch.float64)[::-1]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("options", THREAD_OPTIONS, ids=THREAD_IDS)
def test_native_float32_with_two_threads_as_with_one(options):
    """float32 (the oneDNN / MKL GEMM paths, threaded): two threads give one thread's results up
    to float32 rounding of differently ordered sums."""
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _native_run(options, torch.float32)[1]
        torch.set_num_threads(2)
        two = _native_run(options, torch.float32)[1]
    finally:
        torch.set_num_threads(n)
    for a, b in zip(two, one):
        assert ((a - b).norm() / b.norm().clamp(min=1e-30)).item() < 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chunked_onednn_gemm_within_the_accuracy_rule(cell, monkeypatch):
    """A per-step GEMM with K > 512 and enough work (here B = 128, H = 600: K = 600 forward,
    4H or 3H backward) runs on oneDNN in K chunks of at most 512: a path of its own (its
    float32 results differ from MKL's), each output within twice torch's own float32 error
    against float64 (the correctness rule), forward and gradients."""
    import fusedrnn

    T, B, H = 8, 128, 600  # (the weight is packed from 8 steps on)
    torch.manual_seed(0)
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H, dtype=torch.float64)
    ours = (fusedrnn.LSTM if cell == "lstm" else fusedrnn.GRU)(H, H, backend="native")
    torch_f32 = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H)
    ours.load_state_dict(ref.state_dict())
    torch_f32.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, H, dtype=torch.float64)
    gy = torch.randn(T, B, H, dtype=torch.float64)

    def run(m, dt):
        xx = x.to(dt).requires_grad_()
        y = m(xx)[0]
        g = torch.autograd.grad((y * gy.to(dt)).sum(), [xx, m.weight_hh_l0, m.weight_ih_l0])
        return [t.double() for t in (y, *g)]

    want = run(ref, torch.float64)
    theirs = run(torch_f32, torch.float32)
    ours_out = run(ours, torch.float32)
    monkeypatch.setenv("FUSEDRNN_CPU_GEMM", "mkl")
    mkl_out = run(ours, torch.float32)
    assert not torch.equal(ours_out[0], mkl_out[0])  # the chunked oneDNN path ran
    for name, o, t, w in zip(("y", "dx", "dW_hh", "dW_ih"), ours_out, theirs, want):
        err_o, err_t = (o - w).abs().max().item(), (t - w).abs().max().item()
        assert err_o <= 2 * err_t, f"{cell} {name}: {err_o:.3e} > 2 x torch's {err_t:.3e}"
