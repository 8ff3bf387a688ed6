"""Zoneout, the LayerNorm LSTM and weight dropout (DropConnect on W_hh), against the
independent oracle of tests/direct.py in float64, on every backend that serves them, and at
module level: the default construction, the same masks for the same seed on every backend,
eval semantics, LSTMCell's held masks, state_dict compatibility, convert / patch / explain.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fusedrnn
from fusedrnn import ops
from direct import direct_layer
from helpers import assert_close, grads

T, B, I, H = 6, 4, 3, 5
DT = torch.float64
TRITON = ops.decision.unavailable_reason("triton", torch.device("cpu")) is None
BACKENDS = fusedrnn.available_backends("cpu")  # native (when built) and reference
# every backend that runs these options on the CPU: the Triton kernels through the interpreter
ZONEOUT_BACKENDS = BACKENDS + (["triton"] if TRITON else [])
TRITON_DESIGNS = ("step", "persistent", "persistent-stream")


def _weights(R=H, proj=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.rand(*s, generator=g, dtype=DT) - 0.5).requires_grad_()  # noqa: E731
    w = dict(w_ih=r(4 * H, I), w_hh=r(4 * H, R), b_ih=r(4 * H), b_hh=r(4 * H))
    w["w_hr"] = r(R, H) if proj else None
    return w


def _ln_params(seed=3):
    g = torch.Generator().manual_seed(seed)
    r = lambda n, c: (c + 0.3 * torch.randn(n, generator=g, dtype=DT)).requires_grad_()  # noqa: E731
    return dict(wx=r(4 * H, 1), bx=r(4 * H, 0), wh=r(4 * H, 1), bh=r(4 * H, 0), wc=r(H, 1), bc=r(H, 0), eps=1e-5)


def _recurrent_ln(p):
    return ops.RecurrentLN(weight_x=p["wx"], bias_x=p["bx"], weight_h=p["wh"], bias_h=p["bh"], weight_c=p["wc"],
                           bias_c=p["bc"], eps=p["eps"])


def _zoneout(R, rates=(0.4, 0.3), seed=5, training=True):
    g = torch.Generator().manual_seed(seed)
    if not training:
        return torch.full((T, B, H), rates[0], dtype=DT), torch.full((T, B, R), rates[1], dtype=DT)
    return ((torch.rand(T, B, H, generator=g, dtype=DT) < rates[0]).to(DT),
            (torch.rand(T, B, R, generator=g, dtype=DT) < rates[1]).to(DT))


CASES = {
    "zoneout": dict(zoneout=True),
    "zoneout-eval": dict(zoneout="eval"),
    "zoneout-proj": dict(zoneout=True, proj=True),
    "zoneout-reverse-lengths": dict(zoneout=True, reverse=True, lengths=True),
    "zoneout-var-mask": dict(zoneout=True, mask="shared"),
    "zoneout-step-mask-proj-lengths": dict(zoneout=True, mask="per_step", proj=True, lengths=True),
    "zoneout-bn": dict(zoneout=True, bn=True),
    "zoneout-bn-lengths-reverse": dict(zoneout=True, bn=True, lengths=True, reverse=True),
    "ln": dict(ln=True),
    "ln-proj-reverse": dict(ln=True, proj=True, reverse=True),
    "ln-zoneout-mask-lengths": dict(ln=True, zoneout=True, mask="per_step", lengths=True),
}


def _bn_dict(seed=7):
    g = torch.Generator().manual_seed(seed)
    r = lambda n: (0.1 + 0.5 * torch.rand(n, generator=g, dtype=DT)).requires_grad_()  # noqa: E731
    return dict(gamma_x=r(4 * H), gamma_h=r(4 * H), gamma_c=r(H), beta_c=(0.1 * torch.randn(H, generator=g,
                dtype=DT)).requires_grad_(), rm_x=torch.zeros(T, 4 * H, dtype=DT), rv_x=torch.ones(T, 4 * H, dtype=DT),
                rm_h=torch.zeros(T, 4 * H, dtype=DT), rv_h=torch.ones(T, 4 * H, dtype=DT),
                rm_c=torch.zeros(T, H, dtype=DT), rv_c=torch.ones(T, H, dtype=DT), training=True, momentum=0.1,
                eps=1e-5)


def _recurrent_bn(d):
    return ops.RecurrentBN(weight_x=d["gamma_x"], weight_h=d["gamma_h"], weight_c=d["gamma_c"], bias_c=d["beta_c"],
                           running_mean_x=d["rm_x"].clone(), running_var_x=d["rv_x"].clone(),
                           running_mean_h=d["rm_h"].clone(), running_var_h=d["rv_h"].clone(),
                           running_mean_c=d["rm_c"].clone(), running_var_c=d["rv_c"].clone(), training=True,
                           momentum=0.1, eps=1e-5)


def _run_case(backend, case):
    proj = case.get("proj", False)
    R = 3 if proj else H
    w = _weights(R, proj)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(T, B, I, generator=g, dtype=DT, requires_grad=True)
    h0 = (0.5 * torch.randn(B, R, generator=g, dtype=DT)).requires_grad_()
    c0 = (0.5 * torch.randn(B, H, generator=g, dtype=DT)).requires_grad_()
    lengths = torch.tensor([T, 3, 1, 5]) if case.get("lengths") else None
    mask = None
    if case.get("mask"):
        shape = (B, R) if case["mask"] == "shared" else (T, B, R)
        mask = (torch.rand(*shape, generator=g, dtype=DT) > 0.3).to(DT) / 0.7
    zo = _zoneout(R, training=case["zoneout"] is True) if case.get("zoneout") else None
    ln = _ln_params() if case.get("ln") else None
    bnd = _bn_dict() if case.get("bn") else None
    reverse = case.get("reverse", False)
    leaves = [x, h0, c0] + [t for t in w.values() if t is not None]
    leaves += [t for t in (ln or {}).values() if isinstance(t, torch.Tensor)]
    leaves += [bnd[k] for k in ("gamma_x", "gamma_h", "gamma_c", "beta_c")] if bnd else []
    norm = _recurrent_ln(ln) if ln else (_recurrent_bn(bnd) if bnd else None)
    out = ops.lstm_layer(x, h0, c0, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], w["w_hr"], mask=mask, lengths=lengths,
                         reverse=reverse, norm=norm, zoneout=None if zo is None else ops.Zoneout(*zo), backend=backend)
    ref = direct_layer(x, h0, c0, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], w["w_hr"], mask=mask, lengths=lengths,
                       reverse=reverse, bn=bnd, zoneout=zo, ln=ln)
    return out, ref, leaves


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", ZONEOUT_BACKENDS)
def test_layer_matches_direct_oracle(backend, case):
    """Outputs, final state and every gradient (through y, h_n and c_n) against the direct
    row-by-row oracle in float64, with explicit zoneout weights and LN parameters."""
    out, ref, leaves = _run_case(backend, CASES[case])
    for a, b, name in zip(out, ref, ("y", "h_n", "c_n")):
        assert_close(a, b, msg=f"{backend} {case} {name}")
    g = torch.Generator().manual_seed(2)
    wts = [torch.randn(t.shape, generator=g, dtype=DT) for t in out]
    ga = grads(sum((t * w).sum() for t, w in zip(out, wts)), leaves)
    gb = grads(sum((t * w).sum() for t, w in zip(ref, wts)), leaves)
    for k, (a, b) in enumerate(zip(ga, gb)):
        assert_close(a, b, msg=f"{backend} {case} grad {k}")


def test_zoneout_changes_the_result():
    """The oracle comparison is not vacuous: zoneout weights of 1 keep the initial state."""
    R = H
    w = _weights()
    x = torch.randn(T, B, I, dtype=DT)
    h0, c0 = torch.randn(B, R, dtype=DT), torch.randn(B, H, dtype=DT)
    ones = ops.Zoneout(torch.ones(T, B, H, dtype=DT), torch.ones(T, B, R, dtype=DT))
    for backend in ZONEOUT_BACKENDS:
        y, h_n, c_n = ops.lstm_layer(x, h0, c0, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], zoneout=ones,
                                     backend=backend)
        assert_close(h_n, h0, msg=backend)
        assert_close(c_n, c0, msg=backend)
        assert_close(y, h0.expand(T, B, R), msg=backend)


@pytest.mark.skipif(not TRITON, reason="triton interpreter not available")
@pytest.mark.parametrize("design", TRITON_DESIGNS)
@pytest.mark.parametrize("case", list(CASES))
def test_triton_designs_match_direct_oracle(design, case):
    """Each Triton design (the default one runs in test_layer_matches_direct_oracle) against
    the direct oracle.  Layer norm runs on the per-step design only (its row statistics span
    every column block); a forced persistent design refuses it, naming why."""
    from fusedrnn.backends.triton import host as TH

    with TH.forced_design(design):
        if "ln" in case and design != "step":
            with pytest.raises(ValueError, match="layer norm runs on the per-step design"):
                _run_case("triton", CASES[case])
            return
        out, ref, leaves = _run_case("triton", CASES[case])
        g = torch.Generator().manual_seed(2)
        wts = [torch.randn(t.shape, generator=g, dtype=DT) for t in out]
        ga = grads(sum((t * w).sum() for t, w in zip(out, wts)), leaves)
    gb = grads(sum((t * w).sum() for t, w in zip(ref, wts)), leaves)
    for k, (a, b) in enumerate(zip(list(out) + list(ga), list(ref) + list(gb))):
        assert_close(a, b, msg=f"triton {design} {case} output/grad {k}")


def _blocks_case(B_, H_, P_, T_=3, seed=4):
    """Inputs of ops.lstm_recurrence with zoneout, layer norm, a per-step mask, lengths and
    reverse at a shape larger than one tile."""
    g = torch.Generator().manual_seed(seed)
    R = P_ or H_
    rn = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
    xp, h0, c0, w_hh = rn(T_, B_, 4 * H_), rn(B_, R), rn(B_, H_), 0.3 * rn(4 * H_, R)
    w_hr = 0.3 * rn(R, H_) if P_ else None
    lens = torch.tensor(([T_, 1, T_ - 1, 2, 0] * B_)[:B_])
    m = (torch.rand(T_, B_, R, generator=g, dtype=DT) > 0.3).to(DT) / 0.7
    zo = ops.Zoneout((torch.rand(T_, B_, H_, generator=g) < 0.4).to(DT), (torch.rand(T_, B_, R, generator=g) < 0.3).to(DT))
    lnp = (1 + 0.3 * rn(4 * H_), 0.3 * rn(4 * H_), 1 + 0.3 * rn(H_), 0.3 * rn(H_))
    leaves = [t.requires_grad_() for t in (xp, h0, c0, w_hh) + ((w_hr,) if P_ else ()) + lnp]
    ln = ops.RecurrentLN(weight_x=None, bias_x=None, weight_h=lnp[0], bias_h=lnp[1], weight_c=lnp[2], bias_c=lnp[3],
                         eps=1e-5)
    return dict(xp=xp, h0=h0, c0=c0, weight_hh=w_hh, weight_hr=w_hr, mask=m, lengths=lens, reverse=True,
                zoneout=zo), ln, leaves


def _backends_agree(kw, leaves, backends=("triton", "reference")):
    outs = {}
    for backend in backends:
        out = ops.lstm_recurrence(**kw, backend=backend)
        loss = sum((t * (k + 1.5)).sum() for k, t in enumerate(out))
        outs[backend] = list(out) + list(grads(loss, leaves))
    for k, (a, b) in enumerate(zip(*outs.values())):
        assert_close(a, b, msg=f"{backends} output/grad {k}")


@pytest.mark.skipif(not TRITON, reason="triton interpreter not available")
@pytest.mark.parametrize("norm", ["ln", "none"])
@pytest.mark.parametrize("P_", [0, 18])
def test_triton_step_design_with_many_blocks(monkeypatch, norm, P_):
    """The per-step design with several column and row blocks (16-wide tiles over B = 20,
    H = 20, P = 18, as on a GPU): layer norm's whole-row kernels loop over several column
    blocks (their row statistics, the passes after a barrier) and write one parameter-gradient
    row per row block; zoneout, masks, lengths and reverse on top."""
    from fusedrnn.backends.triton import config as TC
    from fusedrnn.backends.triton import host as TH

    def small(s, dev):
        return TC.Tiling("step", BB=16, BH=16, BP=16, BK=16, num_warps=4, nb=-(-s.B // 16))

    monkeypatch.setattr(TC, "step_tiling", small)
    monkeypatch.setattr(TC, "LN_COLS", {"ln_fwd": 16, "ln_bwd": 16})  # two blocks of H, five of 4H
    monkeypatch.setattr(TC, "LN_PARTS", 1)  # the two GEMM blocks' statistics merged in two loads
    kw, ln, leaves = _blocks_case(20, 20, P_)
    if norm == "ln":
        kw["norm"] = ln
    else:
        leaves = leaves[:-4]
    with TH.forced_design("step"):
        _backends_agree(kw, leaves)


@pytest.mark.skipif(not TRITON, reason="triton interpreter not available")
@pytest.mark.parametrize("P_", [0, 24])
def test_triton_persistent_zoneout_with_several_blocks(monkeypatch, P_):
    """Zoneout in the persistent kernels on the tiling a GPU gets (B = 40: two row blocks;
    H = 40 / 20: several column blocks), their programs run as threads so that the grid
    barriers work: the carried dL/dh (dy included) that zoneout passes on to the step
    before crosses programs through the transfer."""
    from interp_grid import gpu_sized_tilings, threaded_programs

    from fusedrnn.backends.triton import host as TH

    design, H_, nprog = "persistent-stream", 40, 6  # (W resident: the single-program interpreter runs)
    kw, _, leaves = _blocks_case(40, H_, P_, T_=4)
    leaves = leaves[:-4]
    gpu_sized_tilings(monkeypatch)
    with TH.forced_design(design):
        tiling = TH.tilings_for(torch.device("cpu"), TH.shape_of(40, H_, P_ or H_, bool(P_), 0, DT))[0]
        assert tiling.design == "persistent" and tiling.nprog == nprog, tiling
        with threaded_programs():
            _backends_agree(kw, leaves)


# On Triton (the interpreter: ~0.1 s a launch) layer norm is checked with zoneout and the
# projection at once: "ln" alone is a subset of "ln-zoneout-proj" there.
@pytest.mark.parametrize("family,what", [(f, w) for f in ("native", "triton")
                                         for w in ("zoneout-train", "zoneout-eval", "ln", "ln-zoneout-proj")
                                         if not (f == "triton" and w == "ln")],
                         ids=[f"{w}-{f}" for f in ("native", "triton")
                              for w in ("zoneout-train", "zoneout-eval", "ln", "ln-zoneout-proj")
                              if not (f == "triton" and w == "ln")])
def test_op_gradcheck_and_opcheck(family, what):
    """gradcheck of the layer op of each family (the native C++ one, the Triton one through the
    interpreter) with zoneout (train weights, eval rates) and layer norm (every LN
    parameter), and opcheck of its schema with those arguments (forward; the Triton
    backward too)."""
    from fusedrnn.core import schema

    if family == "native" and "native" not in BACKENDS:
        pytest.skip("fusedrnn._C not built")
    if family == "triton" and not TRITON:
        pytest.skip("triton interpreter not available")

    Ts, Bs, Hs = (2 if family == "triton" else 3), 2, 2  # (the interpreter: ~0.1 s a launch)
    proj = what.endswith("proj")
    R = 1 if proj else Hs
    rg = lambda *s: torch.randn(*s, dtype=DT, requires_grad=True)  # noqa: E731
    xp, h0, c0, w_hh = rg(Ts, Bs, 4 * Hs), rg(Bs, R), rg(Bs, Hs), rg(4 * Hs, R)
    w_hr = rg(R, Hs) if proj else None
    zo = None
    if what.startswith("zoneout-train") or what == "ln-zoneout-proj":
        zo = ops.Zoneout((torch.rand(Ts, Bs, Hs) < 0.5).to(DT), (torch.rand(Ts, Bs, R) < 0.5).to(DT))
    elif what == "zoneout-eval":
        zo = ops.Zoneout(torch.full((1, 1, 1), 0.3, dtype=DT).expand(Ts, Bs, Hs),
                         torch.full((1, 1, 1), 0.2, dtype=DT).expand(Ts, Bs, R))
    ln_params = [rg(4 * Hs), rg(4 * Hs), rg(Hs), rg(Hs)] if what.startswith("ln") else []

    def f(xp, h0, c0, w_hh, *rest):
        w_hr = rest[0] if proj else None
        ln = None
        if ln_params:
            wh, bh, wc, bc = rest[-4:]
            ln = ops.RecurrentLN(weight_x=None, bias_x=None, weight_h=wh, bias_h=bh, weight_c=wc, bias_c=bc, eps=1e-5)
        return ops.lstm_recurrence(xp, h0, c0, w_hh, w_hr, norm=ln, zoneout=zo, backend=family)

    inputs = (xp, h0, c0, w_hh) + ((w_hr,) if proj else ()) + tuple(ln_params)
    # the interpreter runs a Triton launch in ~0.1 s: the fast gradcheck (random directions)
    assert torch.autograd.gradcheck(f, inputs, fast_mode=family == "triton")
    ln = (ops.RecurrentLN(weight_x=None, bias_x=None, weight_h=ln_params[0], bias_h=ln_params[1],
                          weight_c=ln_params[2], bias_c=ln_params[3], eps=1e-5) if ln_params else None)
    cfg = ops.Config.of(xp, h0, c0, w_hh, w_hr, None, None, False, ln, zo)
    args = (xp, h0, c0, *schema.layer_params(cfg, w_hh, w_hr, None, None, ln, zo), True)
    if family == "native":
        torch.library.opcheck(torch.ops.fusedrnn.lstm_layer_forward.default, args)
        return
    fwd, bwd = torch.ops.fusedrnn_triton.lstm_layer_forward, torch.ops.fusedrnn_triton.lstm_layer_backward
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
    for save in (True, False) if ln_params else (True,):  # layer norm's workspace with and without saving
        torch.library.opcheck(fwd.default, args[:-1] + (save,), test_utils=utils)
    out = fwd(*args)
    bargs = (torch.randn_like(out[0]), torch.randn_like(out[1]), torch.randn_like(out[2]),
             *args[3:3 + len(schema.PARAMS)], *out[3:])
    torch.library.opcheck(bwd.default, bargs, test_utils=utils)


@settings(max_examples=25, deadline=None)
@given(T_=st.integers(1, 5), B_=st.integers(1, 4), H_=st.integers(1, 4), proj=st.booleans(),
       reverse=st.booleans(), lengths=st.booleans(), mask=st.sampled_from([None, "shared", "per_step"]),
       rates=st.tuples(st.floats(0, 0.9), st.floats(0, 0.9)), training=st.booleans(), ln=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fuzz_fused_matches_reference(T_, B_, H_, proj, reverse, lengths, mask, rates, training, ln, seed):
    """Random shapes and options (zoneout, layer norm, masks, lengths, projection): the native
    kernel and the Triton kernels (interpreter, default design) against the reference
    backend (float64, outputs and gradients)."""
    fused = [b for b in ZONEOUT_BACKENDS if b != "reference"]
    if not fused:
        pytest.skip("neither fusedrnn._C nor the triton interpreter")
    g = torch.Generator().manual_seed(seed)
    R = max(1, H_ - 1) if proj else H_
    rn = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
    xp, h0, c0, w_hh = rn(T_, B_, 4 * H_), rn(B_, R), rn(B_, H_), 0.5 * rn(4 * H_, R)
    w_hr = 0.5 * rn(R, H_) if proj else None
    lens = torch.randint(0, T_ + 1, (B_,), generator=g) if lengths else None
    m = None
    if mask:
        m = (torch.rand(*((B_, R) if mask == "shared" else (T_, B_, R)), generator=g, dtype=DT) > 0.3).to(DT) / 0.7
    if training:
        zo = ops.Zoneout((torch.rand(T_, B_, H_, generator=g) < rates[0]).to(DT),
                         (torch.rand(T_, B_, R, generator=g) < rates[1]).to(DT))
    else:
        zo = ops.zoneout_weights(rates, T_, B_, H_, R, xp, False)
    lnp = (1 + 0.3 * rn(4 * H_), 0.3 * rn(4 * H_), 1 + 0.3 * rn(H_), 0.3 * rn(H_)) if ln else ()
    leaves = [t.requires_grad_() for t in (xp, h0, c0, w_hh) + ((w_hr,) if proj else ()) + lnp]
    norm = (ops.RecurrentLN(weight_x=None, bias_x=None, weight_h=lnp[0], bias_h=lnp[1], weight_c=lnp[2],
                            bias_c=lnp[3], eps=1e-5) if ln else None)
    kw = dict(xp=xp, h0=h0, c0=c0, weight_hh=w_hh, weight_hr=w_hr, mask=m, lengths=lens, reverse=reverse, norm=norm,
              zoneout=zo)
    for backend in fused:
        _backends_agree(kw, leaves, (backend, "reference"))


# ---- modules ------------------------------------------------------------------------------------


# (layer norm alone and weight dropout alone are subsets of their combinations here: the
# same draws and kernels, and 12 s of the suite on the Triton interpreter)
MODULE_OPTIONS = {
    "zoneout": dict(zoneout=0.3),
    "zoneout-pair-var": dict(zoneout=(0.2, 0.5), recurrent_dropout=0.25, variational=True),
    "zoneout-bn": dict(zoneout=0.2, batch_norm=True, bn_max_steps=T),
    "layer_norm-zoneout-wd": dict(layer_norm=True, zoneout=0.15, weight_dropout=0.3),
    "weight_dropout-rd": dict(weight_dropout=0.3, recurrent_dropout=0.2),
}


def _module_results(options, backend=None, *, training=True, bidirectional=True, proj_size=0, seed=0, steps=4):
    torch.manual_seed(seed)
    kw = {} if backend is None else dict(backend=backend)
    m = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=bidirectional, proj_size=proj_size, dropout=0.2,
                      dtype=DT, **options, **kw)
    m.train(training)
    torch.manual_seed(seed + 1)
    x = torch.randn(steps, B, I, dtype=DT, requires_grad=True)
    torch.manual_seed(seed + 2)  # the masks
    y, (h, c) = m(x)
    loss = y.pow(2).sum() + (h * 0.7).sum() + (c * 1.3).sum()
    params = [p for _, p in sorted(m.named_parameters())]
    return [y, h, c] + list(grads(loss, [x] + params))


@pytest.mark.parametrize("name", list(MODULE_OPTIONS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_same_seed_same_result_on_every_backend(name, training):
    """The default construction (no backend=) and every backend that serves the options give
    the same outputs and gradients for the same seed: the masks are drawn once, in Python, in
    one order."""
    options = MODULE_OPTIONS[name]
    base = _module_results(options, "reference", training=training)
    for backend in [None] + [b for b in ZONEOUT_BACKENDS if b != "reference"]:
        res = _module_results(options, backend, training=training)
        for k, (a, b) in enumerate(zip(res, base)):
            assert_close(a, b, msg=f"{name} {backend or 'default'} {k}")


def _zoneout_oracle(T, B, H, rates):
    """Training zoneout weights (c, h) from the generator's next draw, by their definition:
    64-bit words uniform over [-2^63, 2^63 - 1), each read as four signed 16-bit lanes from the low bits up, one
    lane per decision in the order [T, B, c's H units then h's H]; a unit keeps its previous
    value where its lane is below rate * 2^16 - 2^15."""
    n = T * B * 2 * H
    words = torch.randint(-2**63, 2**63 - 1, (-(-n // 4),), dtype=torch.int64)
    lanes = torch.stack([(words >> (16 * k)) & 0xFFFF for k in range(4)], 1).view(-1)[:n]
    lanes = torch.where(lanes >= 2**15, lanes - 2**16, lanes).view(T, B, 2 * H)
    return tuple((part < round(r * 65536) - 32768).to(DT) for part, r in zip((lanes[..., :H], lanes[..., H:]), rates))


def test_module_zoneout_against_oracle_with_the_modules_draws():
    """One layer, the default construction: training-mode zoneout is Bernoulli(rate) weights
    drawn fresh at every step (one draw of 16-bit lanes [T, B, H + R], _zoneout_oracle), and
    eval mode is the expectation."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(I, H, zoneout=(0.3, 0.6), dtype=DT)
    x = torch.randn(T, B, I, dtype=DT)
    args = (x, torch.zeros(B, H, dtype=DT), torch.zeros(B, H, dtype=DT), m.weight_ih_l0, m.weight_hh_l0,
            m.bias_ih_l0, m.bias_hh_l0)
    torch.manual_seed(1)
    y, (h, c) = m(x)
    torch.manual_seed(1)
    zc, zh = _zoneout_oracle(T, B, H, (0.3, 0.6))
    ref = direct_layer(*args, zoneout=(zc, zh))
    assert_close(y, ref[0], msg="train y")
    assert_close(c[0], ref[2], msg="train c_n")
    m.eval()
    y, (h, c) = m(x)
    ref = direct_layer(*args, zoneout=(torch.full((T, B, H), 0.3, dtype=DT), torch.full((T, B, H), 0.6, dtype=DT)))
    assert_close(y, ref[0], msg="eval y")
    assert_close(c[0], ref[2], msg="eval c_n")


def _weight_mask_oracle(p, rows, cols):
    """DropConnect's mask from the generator's next draw, by its definition: 64-bit words
    uniform over [0, 2^63 - 1), each four 16-bit lanes (low to high; the top one has 15
    random bits), an element kept where its lane is below 1 - p of the lane's range."""
    words = torch.randint(0, 2**63 - 1, (-(-rows * cols // 4),), dtype=torch.int64)
    kept = []
    for k in range(4):
        lane = (words >> (16 * k)) & 0xFFFF
        if k < 3:  # read as a signed 16-bit number, uniform over [-2^15, 2^15)
            kept.append(lane - 65536 * (lane >= 32768) < round((1 - p) * 65536) - 32768)
        else:
            kept.append(lane < round((1 - p) * 32768))
    return torch.stack(kept, 1).view(-1)[:rows * cols].view(rows, cols).to(DT).div_(1 - p)


def test_weight_dropout_semantics():
    """One mask over W_hh's elements per forward (scaled by 1 / (1 - p)), shared by every
    step and row, training only; the parameter stays unmasked; eval is nn.LSTM exactly."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(I, H, weight_dropout=0.5, dtype=DT)
    w_before = m.weight_hh_l0.detach().clone()
    x = torch.randn(T, B, I, dtype=DT)
    torch.manual_seed(3)
    y, _ = m(x)
    torch.manual_seed(3)
    wm = _weight_mask_oracle(0.5, 4 * H, H)
    zeros = torch.zeros(B, H, dtype=DT)
    ref = direct_layer(x, zeros, zeros, m.weight_ih_l0, m.weight_hh_l0 * wm, m.bias_ih_l0, m.bias_hh_l0)
    assert_close(y, ref[0], msg="train")
    assert torch.equal(m.weight_hh_l0.detach(), w_before)
    y2, _ = m(x)  # a new call, a new mask
    assert not torch.allclose(y, y2)
    torch.manual_seed(0)
    plain = nn.LSTM(I, H, dtype=DT)
    m.eval()
    plain.eval()
    assert_close(m(x)[0], plain(x)[0], msg="eval")
    for backend in BACKENDS:  # the fused layers in eval: no mask either
        torch.manual_seed(0)
        fused = fusedrnn.LSTM(I, H, weight_dropout=0.5, dtype=DT, backend=backend).eval()
        assert_close(fused(x)[0], plain(x)[0], msg=f"eval {backend}")


def test_weight_dropout_keeps_nn_lstm_checkpoints():
    """state_dict keys and values are nn.LSTM's both ways (weight dropout adds no parameter)."""
    src = nn.LSTM(I, H, num_layers=2)
    m = fusedrnn.LSTM(I, H, num_layers=2, weight_dropout=0.3, zoneout=0.1)
    m.load_state_dict(src.state_dict())
    assert list(m.state_dict()) == list(src.state_dict())
    back = nn.LSTM(I, H, num_layers=2)
    back.load_state_dict(m.state_dict())


def test_layer_norm_parameters_and_train_eval_agree():
    m = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True, layer_norm=True, dtype=DT)
    names = {n for n, _ in m.named_parameters() if n.startswith("ln_")}
    assert {"ln_x_weight_l0", "ln_h_bias_l1_reverse", "ln_c_weight_l1", "ln_c_bias_l0_reverse"} <= names
    assert len(names) == 6 * 4
    assert all(torch.all(p == 1) for n, p in m.named_parameters() if n.startswith("ln_") and "weight" in n)
    assert all(torch.all(p == 0) for n, p in m.named_parameters() if n.startswith("ln_") and "bias" in n)
    x = torch.randn(T, B, I, dtype=DT)
    y_train, _ = m(x)
    m.eval()
    y_eval, _ = m(x)
    assert_close(y_train, y_eval, msg="layer norm has no batch statistics")


def test_option_errors():
    with pytest.raises(ValueError, match="layer_norm=True and batch_norm=True"):
        fusedrnn.LSTM(I, H, layer_norm=True, batch_norm=True)
    with pytest.raises(ValueError, match="zoneout"):
        fusedrnn.LSTM(I, H, zoneout=1.0)
    with pytest.raises(ValueError, match="zoneout"):
        fusedrnn.LSTM(I, H, zoneout=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="weight_dropout"):
        fusedrnn.LSTMCell(I, H, weight_dropout=-0.1)
    with pytest.raises(TypeError, match="layer_norm"):
        fusedrnn.LSTM(I, H, layer_norm=1)
    with pytest.raises(ValueError, match="layer_norm=True and batch_norm=True"):
        fusedrnn.patch(layer_norm=True, batch_norm=True)


def test_explicit_backends_that_lack_an_option_refuse_it(monkeypatch):
    """aten (torch's own LSTM) has none of these options; the CUDA kernels admit zoneout and
    layer norm (compiled, not yet run on a GPU) only on request, and say so (auto then runs
    them on the triton backend)."""
    x = torch.randn(T, B, I)
    with pytest.raises(ops.BackendError):
        fusedrnn.LSTM(I, H, zoneout=0.1, backend="aten")(x)
    from fusedrnn.backends.cuda import BACKEND as CUDA

    def why(**kw):
        return CUDA.unsupported_reason(ops.Config.build("cpu", torch.float32, T, B, H, H, **kw))

    monkeypatch.delenv("FUSEDRNN_CUDA_UNVERIFIED", raising=False)
    assert "layer norm" in why(norm=ops.NormMode.LAYER) and "FUSEDRNN_CUDA_UNVERIFIED=1" in why(zoneout=True)
    monkeypatch.setenv("FUSEDRNN_CUDA_UNVERIFIED", "1")
    for kw in (dict(zoneout=True), dict(norm=ops.NormMode.LAYER)):
        assert why(**kw) is None or "UNVERIFIED" not in why(**kw)


def test_which_backend_runs_by_default():
    """auto: zoneout, layer norm and weight dropout on the native kernel (when built);
    explain() says so."""
    x = torch.randn(T, B, I)
    expected = "native" if "native" in BACKENDS else "reference"
    for opts, be in ((dict(zoneout=0.2), expected), (dict(weight_dropout=0.2), expected),
                     (dict(layer_norm=True), expected)):
        m = fusedrnn.LSTM(I, H, **opts)
        plan = m.decide(x)
        assert not plan.aten and plan.backend.name == be, (opts, plan)
        text = fusedrnn.explain(m, x)
        assert f": {be}" in text
    m = fusedrnn.LSTM(I, H, zoneout=0.2)
    assert "zoneout" in fusedrnn.explain(m, x) and "zoneout=0.2" in repr(m)


# ---- LSTMCell -------------------------------------------------------------------------------------


def test_cell_holds_weight_mask_until_reset_and_draws_zoneout_each_step():
    torch.manual_seed(0)
    cell = fusedrnn.LSTMCell(I, H, weight_dropout=0.5, zoneout=(0.3, 0.4), dtype=DT)
    x = torch.randn(3, B, I, dtype=DT)
    torch.manual_seed(4)
    h = c = torch.zeros(B, H, dtype=DT)
    outs = []
    for t in range(3):
        h, c = cell(x[t], (h, c))
        outs.append((h, c))
    wm = cell._weight_mask
    assert wm is not None and set(torch.unique(wm).tolist()) <= {0.0, 2.0}
    # the oracle: the weight mask drawn first, then per step one uniform draw for c and h
    torch.manual_seed(4)
    wm_ref = _weight_mask_oracle(0.5, 4 * H, H)
    assert torch.equal(wm, wm_ref)
    h = c = torch.zeros(B, H, dtype=DT)
    for t in range(3):
        zc, zh = _zoneout_oracle(1, B, H, (0.3, 0.4))
        _, h, c = direct_layer(x[t:t + 1], h, c, cell.weight_ih, cell.weight_hh * wm_ref, cell.bias_ih,
                               cell.bias_hh, zoneout=(zc, zh))
        assert_close(outs[t][0], h, msg=f"h step {t}")
        assert_close(outs[t][1], c, msg=f"c step {t}")
    cell.reset()
    assert cell._weight_mask is None


def test_cell_layer_norm_eval_matches_lstm_layer():
    """A LayerNorm cell stepped through a sequence equals the LayerNorm LSTM with the same
    parameters."""
    torch.manual_seed(0)
    lstm = fusedrnn.LSTM(I, H, layer_norm=True, dtype=DT)
    with torch.no_grad():
        for n, p in lstm.named_parameters():
            if n.startswith("ln_"):
                p.add_(0.2 * torch.randn_like(p))
    cell = fusedrnn.LSTMCell(I, H, layer_norm=True, dtype=DT)
    sd = {k.removesuffix("_l0"): v for k, v in lstm.state_dict().items()}
    cell.load_state_dict(sd)
    x = torch.randn(T, B, I, dtype=DT)
    y, _ = lstm(x)
    h = c = torch.zeros(B, H, dtype=DT)
    for t in range(T):
        h, c = cell(x[t], (h, c))
        assert_close(h, y[t], msg=f"step {t}")


# ---- model-level: convert, patch, export ------------------------------------------------------


def test_convert_and_patch_accept_the_options():
    model = nn.Sequential(nn.LSTM(I, H))
    fusedrnn.convert(model, zoneout=0.1, layer_norm=True, weight_dropout=0.2)
    lstm = model[0]
    assert lstm.zoneout == 0.1 and lstm.layer_norm and lstm.weight_dropout == 0.2
    with fusedrnn.patch(zoneout=(0.1, 0.2), weight_dropout=0.3):
        m = torch.nn.LSTM(I, H)
        c = torch.nn.LSTMCell(I, H)
    assert m.zoneout == (0.1, 0.2) and c.weight_dropout == 0.3
    m(torch.randn(T, B, I))


def test_export_in_eval_mode_and_the_error_in_training():
    m = fusedrnn.LSTM(I, H, zoneout=0.2, layer_norm=True, weight_dropout=0.3).eval()
    x = torch.randn(T, B, I)
    ep = torch.export.export(m, (x,))
    assert_close(ep.module()(x)[0], m(x)[0], dtype=torch.float32)
    m.train()
    with pytest.raises(fusedrnn.ExportError, match="zoneout=0.2.*weight_dropout=0.3"):
        torch.export.export(m, (x,))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compile_fullgraph_matches_eager(training):
    """torch.compile(fullgraph=True) of the default construction with all three options: the
    same outputs and gradients as eager for the same seed (masks drawn inside the graph)."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(I, H, num_layers=2, zoneout=(0.2, 0.1), layer_norm=True, weight_dropout=0.25).train(training)
    x = torch.randn(T, B, I)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")  # aot_eager: eager's random draws
    res = []
    for fn in (m, compiled):
        torch.manual_seed(5)
        y, (h, c) = fn(x)
        loss = y.pow(2).sum() + h.sum() + c.sum()
        res.append([y, h, c] + list(grads(loss, [p for _, p in sorted(m.named_parameters())])))
    torch._dynamo.reset()
    for k, (a, b) in enumerate(zip(*res)):
        assert_close(a, b, dtype=torch.float32, msg=f"{k}")
