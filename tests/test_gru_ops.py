"""The GRU layer ops of both families, native (fusedrnn::gru_layer_forward / _backward) and
Triton (fusedrnn_triton::..., through the interpreter on CPU): against the reference
recurrence in float64 (outputs, statistics and every gradient) for each option, outputs fully
written (conftest NaN-poisons fresh buffers), the lean workspace; for the native op also
opcheck, gradcheck, bad arguments, and the module on two threads."""

import pytest
import torch

from fusedrnn.backends import compiled
from helpers import TRITON, native_against_reference
from fusedrnn.backends.reference import gru_recurrence
from fusedrnn.core import schema
from fusedrnn.core.contract import CellKind, Config, RecurrentBN, RecurrentLN, Zoneout

pytestmark = pytest.mark.skipif(compiled.LOAD_ERROR is not None, reason="fusedrnn._C not built")


def _triton_ops():
    from fusedrnn.backends.triton import ops

    return ops.gru_layer_forward, ops.gru_layer_backward


def _native_ops():
    return torch.ops.fusedrnn.gru_layer_forward, torch.ops.fusedrnn.gru_layer_backward


# (family, its ops)
FAMILIES = [("native", _native_ops)] + ([("triton", _triton_ops)] if TRITON else [])

CASES = [
    dict(), dict(bias=False), dict(mask="shared"), dict(mask="per_step"), dict(reverse=True), dict(lengths=True),
    dict(lengths=True, reverse=True), dict(bn="train"), dict(bn="eval"), dict(bn="layer"), dict(zoneout=True),
    dict(zoneout="eval", lengths=True, reverse=True),
    dict(bn="train", mask="shared", lengths=True, reverse=True, zoneout=True),
    dict(bn="eval", mask="per_step", lengths=True, bias=False),
    dict(bn="layer", mask="per_step", zoneout=True, lengths=True, reverse=True),
]
T, B, H, S = 4, 3, 5, 3


def _id(c):
    return "-".join(f"{k}={v}" for k, v in c.items()) or "plain"


def _case(case, dtype=torch.float64, requires_grad=True):
    """The op's arguments (xp, h0, GRU_PARAMS, save) and the differentiable leaves, plus the
    contract's objects for the reference (cfg, norm, zoneout)."""
    g = torch.Generator().manual_seed(0)
    G = 3 * H
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    xp, h0, w_hh = r(T, B, G), r(B, H), 0.5 * r(G, H)
    b_hh = None if case.get("bias") is False else 0.3 * r(G)
    mask = None
    if case.get("mask"):
        shape = (B, H) if case["mask"] == "shared" else (T, B, H)
        mask = torch.bernoulli(torch.full(shape, 0.7, dtype=dtype), generator=g) / 0.7
    lengths = torch.tensor([4, 2, 3]) if case.get("lengths") else None
    kind = case.get("bn")
    gamma = 1 + 0.1 * r(G) if kind else None
    running = (0.1 * r(S, G), 0.5 + torch.rand(S, G, generator=g, dtype=dtype))  # (read in eval only)
    run = running if kind == "eval" else (None, None)
    zh = None
    if case.get("zoneout") == "eval":
        zh = torch.full((1, 1, 1), 0.3, dtype=dtype).expand(T, B, H)
    elif case.get("zoneout"):
        zh = torch.bernoulli(torch.full((T, B, H), 0.4, dtype=dtype), generator=g)
    diff = [t for t in (xp, h0, w_hh, b_hh, gamma) if t is not None]
    for t in diff:
        t.requires_grad_(requires_grad)
    mask_mode = {None: 0, "shared": 1, "per_step": 2}[case.get("mask")]
    norm_mode = {None: 0, "train": 1, "eval": 2, "layer": 3}[kind]
    args = (xp, h0, w_hh, b_hh, mask, mask_mode, lengths, bool(case.get("reverse")), norm_mode, gamma, *run, 1, 1e-3,
            zh, True)
    norm = None
    if kind == "layer":
        norm = RecurrentLN(None, None, gamma, None, None, None, 1e-3)
    elif kind:
        norm = RecurrentBN(None, gamma, None, None, None, None, *running, None, None, training=kind == "train", momentum=0.1,
                           eps=1e-3, step_offset=1)
    zoneout = None if zh is None else Zoneout(None, zh)
    return args, diff, dict(mask=mask, lengths=lengths, norm=norm, zoneout=zoneout, b_hh=b_hh)


def _reference(args, extra):
    xp, h0, w_hh = args[:3]
    cfg = Config.of(xp, h0, None, w_hh, None, extra["mask"], extra["lengths"], args[7], extra["norm"],
                    extra["zoneout"], cell=CellKind.GRU, b_hh=extra["b_hh"])
    res = gru_recurrence(cfg, xp, h0, w_hh, extra["b_hh"], extra["mask"], extra["lengths"], extra["norm"],
                         extra["zoneout"])
    return res


FAMILY_CASES = [(f, ops, c) for f, ops in FAMILIES for c in CASES]


@pytest.mark.parametrize("family,ops,case", FAMILY_CASES, ids=[f"{f}-{_id(c)}" for f, _, c in FAMILY_CASES])
def test_matches_reference(family, ops, case):
    """Outputs, batch statistics and the gradients of every input against the reference."""
    args, diff, extra = _case(case)
    out = ops()[0](*args)
    ref = _reference(args, extra)
    torch.testing.assert_close(out[0], ref.y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[1], ref.h_n, rtol=1e-10, atol=1e-12)
    if case.get("bn") == "train":
        torch.testing.assert_close(out[2][:, 0], ref.stats.mean_h, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out[2][:, 1], ref.stats.var_h, rtol=1e-10, atol=1e-12)
    w = torch.linspace(-1, 1, out[0].numel(), dtype=out[0].dtype).view_as(out[0])
    ours = torch.autograd.grad((out[0] * w).sum() + (out[1] ** 2).sum(), diff)
    theirs = torch.autograd.grad((ref.y * w).sum() + (ref.h_n ** 2).sum(), diff)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_opcheck_forward(case):
    args, _, _ = _case(case)
    torch.library.opcheck(torch.ops.fusedrnn.gru_layer_forward.default, args)


def test_opcheck_backward():
    args, _, _ = _case(dict(bn="train", mask="shared", lengths=True, zoneout=True), requires_grad=False)
    out = torch.ops.fusedrnn.gru_layer_forward(*args)
    bargs = (torch.randn_like(out[0]), torch.randn_like(out[1]), *args[2:2 + len(schema.GRU_PARAMS)], *out[2:])
    torch.library.opcheck(torch.ops.fusedrnn.gru_layer_backward.default, bargs)


@pytest.mark.parametrize("case", [c for c in CASES if c.get("bn") != "train" or c.get("lengths")], ids=_id)
def test_gradcheck(case):
    args, diff, _ = _case(case)
    slots = [i for i, a in enumerate(args) if any(a is d for d in diff)]

    def f(*ts):
        a = list(args)
        for i, t in zip(slots, ts):
            a[i] = t
        y, h_n = torch.ops.fusedrnn.gru_layer_forward(*a)[:2]
        return y, h_n

    assert torch.autograd.gradcheck(f, tuple(diff), atol=1e-7)


@pytest.mark.parametrize("family,ops", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_outputs_fully_written_and_lean_workspace(family, ops):
    """Outputs are NaN-poisoned before the kernel under test: every element of y (zeros past
    each length), h_n, the statistics, the workspace and the gradients must be written; the
    forward without the workspace gives the same outputs (native: from one slot and a ring of
    2; Triton: from none)."""
    fwd, bwd = ops()
    for case in CASES:
        args, _, _ = _case(case, requires_grad=False)
        out = fwd(*args)
        for t in out:
            assert not torch.isnan(t).any(), case
        grads = bwd(torch.randn_like(out[0]), torch.randn_like(out[1]), *args[2:2 + len(schema.GRU_PARAMS)],
                    *out[2:])
        for t in grads:
            assert not torch.isnan(t).any(), case
        lean = fwd(*args[:-1], False)
        for a, b in zip(out[:3], lean[:3]):  # (the GEMM's rounding may depend on its operand's alignment)
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15, msg=str(case))
        if family == "native":
            assert lean[3].shape[0] == 1 and lean[5].shape[0] == 2


def test_bad_arguments():
    args, _, _ = _case(dict(), requires_grad=False)
    op = torch.ops.fusedrnn.gru_layer_forward

    def call(i, v, match):
        a = list(args)
        a[i] = v
        with pytest.raises(RuntimeError, match=match):
            op(*a)

    call(0, torch.randn(T, B, 3 * H + 1, dtype=torch.float64), "3H gate columns")
    call(1, torch.randn(B, H + 1, dtype=torch.float64), "h0 must have shape")
    call(2, torch.randn(3 * H, H + 1, dtype=torch.float64), r"w_hh must have shape \[3H, H\]")
    call(3, torch.randn(2 * H, dtype=torch.float64), "b_hh must have")
    call(6, torch.tensor([9, 1, 1]), "lengths must lie in")
    call(8, 3, "norm_h_weight goes with")
    call(14, torch.zeros(T, B, H + 1, dtype=torch.float64), "zoneout_h must have shape")
    call(0, args[0].float(), "dtype")


def _module_run(options, dtype):
    import fusedrnn

    return native_against_reference(fusedrnn.GRU, options, dtype, 24, 40)


GRU_OPTIONS = [dict(), dict(recurrent_dropout=0.3, variational=True, batch_norm=True),
               dict(layer_norm=True, zoneout=0.2, recurrent_dropout=0.2), dict(weight_dropout=0.3, zoneout=0.1)]
GRU_IDS = ["plain", "v+bn", "ln+zoneout+dropout", "wd+zoneout"]


@pytest.mark.parametrize("options", GRU_OPTIONS, ids=GRU_IDS)
def test_module_with_two_threads_matches_reference(two_threads, options):
    """The whole module (two layers, both directions, lengths) on two threads, float64."""
    ref, ours = _module_run(options, torch.float64)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
