"""Property-based tests (hypothesis): random configurations — sizes, layers, bidirectional,
projection, batch_first, packed / padded, bias, initial state, every regularizer (between-
layer dropout, recurrent dropout per step or variational, batch norm in training or eval
with random running statistics and slot counts) — run on each CPU backend and on the
reference, forward and every gradient, in float64, with the dropout masks fed explicitly
(the module's mask draws are replaced by masks made from the example's seed, identical for
every backend).  conftest.py NaN-poisons fresh allocations, so an unwritten element fails.

Example counts: FUSEDRNN_HYPOTHESIS_PROFILE=ci (the default: bounded, derandomized, fast)
or =long (many more, random; run on demand).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import ops
from fusedrnn.modules import rnn as lstm_module  # the shared pipeline draws the masks

_COMMON = dict(deadline=None, print_blob=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("long", **_COMMON)
PROFILE = os.environ.get("FUSEDRNN_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"FUSEDRNN_HYPOTHESIS_PROFILE must be 'ci' or 'long', got {PROFILE!r}")
settings.load_profile(PROFILE)


def examples(ci: int, long: int):
    return settings(max_examples=long if PROFILE == "long" else ci)


BACKENDS = [b for b in fusedrnn.available_backends("cpu") if b != "reference"]
if fusedrnn.ops.decision.unavailable_reason("triton", torch.device("cpu")) is None:
    BACKENDS.append("triton")
# The Triton interpreter is slow: fewer examples for it.
COUNTS = {"native": (30, 400), "triton": (5, 60)}
TOL = dict(rtol=1e-8, atol=1e-8)


class Masks:
    """Explicit dropout masks: every mask the module would draw comes from a generator
    seeded with the example's seed, restarted for each backend."""

    def __init__(self, seed: int):
        self.seed = seed
        self.restart()

    def restart(self):
        self.g = torch.Generator().manual_seed(self.seed)

    def _mask(self, p, shape, like):
        keep = 1.0 - p
        return ((torch.rand(tuple(shape), generator=self.g, dtype=torch.float64) < keep).to(like.dtype)
                / keep).to(like.device)

    def recurrent_mask(self, p, T, B, R, like, shared):
        return self._mask(p, (B, R) if shared else (T, B, R), like)

    def dropout_mask(self, p, shape, like):
        return self._mask(p, shape, like)

    def dropout(self, x, p, training):
        assert training
        return x * self._mask(p, x.shape, x)


@st.composite
def module_configs(draw):
    H = draw(st.integers(1, 5))
    training = draw(st.booleans())
    bn = draw(st.booleans())
    T = draw(st.integers(1, 5))
    cfg = dict(
        I=draw(st.integers(1, 4)), H=H, T=T,
        B=draw(st.integers(2 if bn and training else 1, 4)),
        num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
        proj_size=draw(st.integers(0, H - 1)), batch_first=draw(st.booleans()), bias=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.4])), recurrent_dropout=draw(st.sampled_from([0.0, 0.3])),
        variational=draw(st.booleans()), batch_norm=bn, bn_max_steps=draw(st.integers(1, 6)),
        bn_momentum=draw(st.floats(0.0, 1.0)), training=training,
        input=draw(st.sampled_from(["padded", "packed-sorted", "packed-unsorted", "unbatched"])),
        hx=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)),
    )
    if cfg["input"] == "unbatched":
        cfg["B"] = 1
        if bn and training:
            cfg["input"] = "padded"
            cfg["B"] = 2
    if cfg["input"].startswith("packed"):
        cfg["lengths"] = draw(st.lists(st.integers(1, T), min_size=cfg["B"], max_size=cfg["B"]))
        cfg["lengths"][draw(st.integers(0, cfg["B"] - 1))] = T
    return cfg


def _run_module(cfg, backend, masks):
    """Forward + gradients of one fusedrnn.LSTM on ``backend``; returns named tensors."""
    kw = {k: cfg[k] for k in ("num_layers", "bidirectional", "proj_size", "batch_first", "bias", "dropout",
                               "recurrent_dropout", "variational", "batch_norm", "bn_max_steps", "bn_momentum")}
    torch.manual_seed(cfg["seed"])  # same initialization on every backend
    m = fusedrnn.LSTM(cfg["I"], cfg["H"], dtype=torch.float64, backend=backend, **kw)
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    if cfg["batch_norm"]:  # random running statistics (used in eval) and gammas
        with torch.no_grad():
            for name, t in sorted(m.named_parameters()) + sorted(m.named_buffers()):
                if name.startswith("bn_"):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + (0.5 if "var" in name else -0.3))
    m.train(cfg["training"])
    T, B, I = cfg["T"], cfg["B"], cfg["I"]
    D, R = 2 if cfg["bidirectional"] else 1, cfg["proj_size"] or cfg["H"]
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64, requires_grad=True)
    leaves = [x]
    if cfg["input"] == "unbatched":
        inp = x[:, 0]
    elif cfg["input"].startswith("packed"):
        inp = pack_padded_sequence(x, torch.tensor(cfg["lengths"]), enforce_sorted=False)
        if cfg["input"] == "packed-sorted":
            order = sorted(range(B), key=lambda b: -cfg["lengths"][b])
            inp = pack_padded_sequence(x[:, order], torch.tensor([cfg["lengths"][b] for b in order]))
    else:
        inp = x.transpose(0, 1) if cfg["batch_first"] else x
    args = (inp,)
    if cfg["hx"]:
        shape_b = () if cfg["input"] == "unbatched" else (B,)
        h0 = torch.randn(D * cfg["num_layers"], *shape_b, R, generator=g, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(D * cfg["num_layers"], *shape_b, cfg["H"], generator=g, dtype=torch.float64,
                         requires_grad=True)
        leaves += [h0, c0]
        args = (inp, (h0, c0))
    masks.restart()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lstm_module, "recurrent_mask", masks.recurrent_mask)
        mp.setattr(lstm_module, "dropout_mask", masks.dropout_mask)
        mp.setattr(lstm_module, "F", SimpleNamespace(dropout=masks.dropout))
        y, (h_n, c_n) = m(*args)
    y = y.data if hasattr(y, "batch_sizes") else y
    outs = {"y": y, "h_n": h_n, "c_n": c_n}
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in outs.values())
    params = list(m.named_parameters())
    gs = torch.autograd.grad(loss, leaves + [p for _, p in params], allow_unused=True)
    names = ["grad x"] + (["grad h0", "grad c0"] if cfg["hx"] else []) + [f"grad {n}" for n, _ in params]
    for n, gr, t in zip(names, gs, leaves + [p for _, p in params]):
        outs[n] = torch.zeros_like(t) if gr is None else gr
    for n, b in m.named_buffers():
        outs[n] = b
    return outs


def _compare(got, want, backend, cfg):
    assert got.keys() == want.keys()
    for n in want:
        a, b = got[n], want[n]
        assert not torch.isnan(a).any(), f"{backend} {n}: NaN (an element left unwritten?) for {cfg}"
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{backend} {n} for {cfg}: {m}")


def _module_test(backend):
    ci, long = COUNTS.get(backend, COUNTS["native"])

    @examples(ci, long)
    @given(cfg=module_configs())
    def test(cfg):
        masks = Masks(cfg["seed"] + 2)
        want = _run_module(cfg, "reference", masks)
        got = _run_module(cfg, backend, masks)
        _compare(got, want, backend, cfg)

    return test


@pytest.mark.filterwarnings("ignore:dropout option adds dropout after all but last recurrent layer")
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_matches_reference(backend):
    _module_test(backend)()


# ---- the layer op: explicit masks, lengths (zeros allowed), reverse, BN slots and offsets -----


@st.composite
def layer_configs(draw):
    H = draw(st.integers(1, 6))
    T = draw(st.integers(0, 6))
    bn = draw(st.sampled_from([None, "train", "eval"]))
    B = draw(st.integers(2 if bn == "train" else 1, 5))
    return dict(T=T, B=B, I=draw(st.integers(1, 4)), H=H, P=draw(st.integers(0, H - 1)),
                mask=draw(st.sampled_from([None, "shared", "per_step"])), bn=bn,
                lengths=draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=B, max_size=B))),
                reverse=draw(st.booleans()), bias=draw(st.booleans()), S=draw(st.integers(1, 4)),
                offset=draw(st.integers(0, 5)), p=draw(st.floats(0.05, 0.9)), seed=draw(st.integers(0, 2 ** 16)))


def _run_layer(cfg, backend):
    g = torch.Generator().manual_seed(cfg["seed"])
    T, B, I, H, P = cfg["T"], cfg["B"], cfg["I"], cfg["H"], cfg["P"]
    R, G = P or H, 4 * H
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    leaves = [r(T, B, I), r(B, R), r(B, H), 0.5 * r(G, I), 0.5 * r(G, R)]
    leaves += [r(G), r(G)] if cfg["bias"] else []
    leaves += [0.5 * r(P, H)] if P else []
    for t in leaves:
        t.requires_grad_()
    x, h0, c0, w_ih, w_hh = leaves[:5]
    b_ih, b_hh = leaves[5:7] if cfg["bias"] else (None, None)
    w_hr = leaves[-1] if P else None
    mask = None
    if cfg["mask"]:
        shape = (B, R) if cfg["mask"] == "shared" else (T, B, R)
        mask = (u(*shape) > cfg["p"]).double() / (1 - cfg["p"])
    lengths = None if cfg["lengths"] is None else torch.tensor(cfg["lengths"], dtype=torch.int64)
    bn = None
    if cfg["bn"]:
        S = cfg["S"]
        bn_w = [(0.1 + u(G)).requires_grad_(), (0.1 + u(G)).requires_grad_(), (0.1 + u(H)).requires_grad_(),
                (u(H) - 0.5).requires_grad_()]
        leaves += bn_w
        bn = ops.RecurrentBN(*bn_w, u(S, G) - 0.5, 0.5 + u(S, G), u(S, G) - 0.5, 0.5 + u(S, G), u(S, H) - 0.5,
                             0.5 + u(S, H), training=cfg["bn"] == "train", momentum=0.3, eps=1e-3,
                             step_offset=cfg["offset"])
    y, h_n, c_n = ops.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, mask=mask, lengths=lengths,
                                 reverse=cfg["reverse"], norm=bn, backend=backend)
    outs = {"y": y, "h_n": h_n, "c_n": c_n}
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in outs.values())
    for i, gr in enumerate(torch.autograd.grad(loss, leaves, allow_unused=True)):
        outs[f"grad{i}"] = torch.zeros_like(leaves[i]) if gr is None else gr
    if bn is not None:
        for k in ("running_mean_x", "running_var_x", "running_mean_h", "running_var_h", "running_mean_c",
                  "running_var_c"):
            outs[k] = getattr(bn, k)
    return outs


def _layer_test(backend):
    ci, long = COUNTS.get(backend, COUNTS["native"])

    @examples(2 * ci, 2 * long)
    @given(cfg=layer_configs())
    def test(cfg):
        _compare(_run_layer(cfg, backend), _run_layer(cfg, "reference"), backend, cfg)

    return test


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_op_matches_reference(backend):
    _layer_test(backend)()


# ---- the GRU's layer op: the same draws, plus layer norm and zoneout ---------------------------


@st.composite
def gru_layer_configs(draw):
    cfg = draw(layer_configs())
    cfg["P"] = 0
    cfg["norm"] = draw(st.sampled_from([None, "train", "eval", "layer"]))
    if cfg["norm"] == "train" and cfg["B"] < 2:
        cfg["B"] = 2
        if cfg["lengths"] is not None:
            cfg["lengths"] = cfg["lengths"] + [cfg["T"]]
    cfg["zoneout"] = draw(st.sampled_from([None, "train", "eval"]))
    return cfg


def _run_gru_layer(cfg, backend):
    g = torch.Generator().manual_seed(cfg["seed"])
    T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
    G = 3 * H
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    leaves = [r(T, B, I), r(B, H), 0.5 * r(G, I), 0.5 * r(G, H)] + ([r(G), r(G)] if cfg["bias"] else [])
    for t in leaves:
        t.requires_grad_()
    x, h0, w_ih, w_hh = leaves[:4]
    b_ih, b_hh = leaves[4:6] if cfg["bias"] else (None, None)
    mask = None
    if cfg["mask"]:
        shape = (B, H) if cfg["mask"] == "shared" else (T, B, H)
        mask = (u(*shape) > cfg["p"]).double() / (1 - cfg["p"])
    lengths = None if cfg["lengths"] is None else torch.tensor(cfg["lengths"], dtype=torch.int64)
    norm = None
    if cfg["norm"] == "layer":
        ln = [(0.5 + u(G)).requires_grad_(), (u(G) - 0.5).requires_grad_(), (0.5 + u(G)).requires_grad_(),
              (u(G) - 0.5).requires_grad_()]
        leaves += ln
        norm = ops.RecurrentLN(*ln, None, None, 1e-3)
    elif cfg["norm"]:
        S = cfg["S"]
        bn_w = [(0.1 + u(G)).requires_grad_(), (0.1 + u(G)).requires_grad_()]
        leaves += bn_w
        norm = ops.RecurrentBN(*bn_w, None, None, u(S, G) - 0.5, 0.5 + u(S, G), u(S, G) - 0.5, 0.5 + u(S, G), None,
                               None, training=cfg["norm"] == "train", momentum=0.3, eps=1e-3,
                               step_offset=cfg["offset"])
    zoneout = None
    if cfg["zoneout"] == "eval":
        zoneout = ops.Zoneout(None, torch.full((1, 1, 1), cfg["p"], dtype=torch.float64).expand(T, B, H))
    elif cfg["zoneout"]:
        zoneout = ops.Zoneout(None, (u(T, B, H) < cfg["p"]).double())
    y, h_n = ops.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, mask=mask, lengths=lengths, reverse=cfg["reverse"],
                           norm=norm, zoneout=zoneout, backend=backend)
    outs = {"y": y, "h_n": h_n}
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in outs.values())
    for i, gr in enumerate(torch.autograd.grad(loss, leaves, allow_unused=True)):
        outs[f"grad{i}"] = torch.zeros_like(leaves[i]) if gr is None else gr
    if isinstance(norm, ops.RecurrentBN):
        for k in ("running_mean_x", "running_var_x", "running_mean_h", "running_var_h"):
            outs[k] = getattr(norm, k)
    return outs


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_layer_op_matches_reference(backend):
    ci, long = COUNTS.get(backend, COUNTS["native"])

    @examples(2 * ci, 2 * long)
    @given(cfg=gru_layer_configs())
    def test(cfg):
        _compare(_run_gru_layer(cfg, backend), _run_gru_layer(cfg, "reference"), backend, cfg)

    test()
