"""The GRU layer ops of both families, native (fusedrnn::gru_layer_forward / _backward) and
Triton (fusedrnn_triton::..., through the interpreter on CPU, on each design: per-step,
persistent with W resident, persistent with W streamed): against the reference recurrence in
float64 (outputs, statistics and every gradient) for each option, outputs fully written
(conftest NaN-poisons fresh buffers), the lean workspace; the persistent kernels also with
several row and column blocks (their programs as threads); for the native op also opcheck,
gradcheck, bad arguments, and the module on two threads."""

import contextlib

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


# (family, its ops): the Triton op on each design it has
TRITON_DESIGNS = ("step", "persistent", "persistent-stream")
FAMILIES = [("native", _native_ops)] + ([(f"triton-{d}", _triton_ops) for d in TRITON_DESIGNS] if TRITON else [])


def _design(family):
    """The Triton design a family runs on (forced around forward and backward), or nothing."""
    if not family.startswith("triton-"):
        return contextlib.nullcontext()
    from fusedrnn.backends.triton import host

    return host.forced_design(family[len("triton-"):])


def _runs(family, case):
    """Layer norm runs on the per-step design only (config.py)."""
    return not (family.startswith("triton-persistent") and case.get("bn") == "layer")

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


def _case(case, dtype=torch.float64, requires_grad=True, T=T, B=B, H=H):
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
    lengths = 1 + (T - 1 + 3 * torch.arange(B)) % T if case.get("lengths") else None  # [4, 3, 2] at B = 3
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


FAMILY_CASES = [(f, ops, c) for f, ops in FAMILIES for c in CASES if _runs(f, c)]


def _tol(rtol, atol, tol):
    return dict(rtol=rtol, atol=atol) if tol is None else dict(rtol=tol, atol=tol)


def _check_against_reference(ops, args, diff, extra, case, tol=None):
    """Outputs, batch statistics and the gradients of every input against the reference
    (float64 tolerances, or tol for rtol and atol)."""
    out = ops()[0](*args)
    ref = _reference(args, extra)
    torch.testing.assert_close(out[0], ref.y, **_tol(1e-10, 1e-12, tol))
    torch.testing.assert_close(out[1], ref.h_n, **_tol(1e-10, 1e-12, tol))
    if case.get("bn") == "train":
        torch.testing.assert_close(out[2][:, 0], ref.stats.mean_h, **_tol(1e-10, 1e-12, tol))
        torch.testing.assert_close(out[2][:, 1], ref.stats.var_h, **_tol(1e-10, 1e-12, tol))
    w = torch.linspace(-1, 1, out[0].numel(), dtype=out[0].dtype).view_as(out[0])
    ours = torch.autograd.grad((out[0] * w).sum() + (out[1] ** 2).sum(), diff)
    theirs = torch.autograd.grad((ref.y * w).sum() + (ref.h_n ** 2).sum(), diff)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **_tol(1e-9, 1e-11, tol))


@pytest.mark.parametrize("family,ops,case", FAMILY_CASES, ids=[f"{f}-{_id(c)}" for f, _, c in FAMILY_CASES])
def test_matches_reference(family, ops, case):
    """Outputs, batch statistics and the gradients of every input against the reference."""
    with _design(family):
        _check_against_reference(ops, *_case(case), case)


@pytest.mark.skipif(not TRITON, reason="triton interpreter not available")
@pytest.mark.parametrize("design", TRITON_DESIGNS)
@pytest.mark.parametrize("case", [dict(), dict(bn="layer", mask="shared")], ids=_id)
def test_triton_zero_steps(design, case):
    """T = 0 launches nothing: h_n = h0, dL/dh0 = dL/dh_n, zero weight gradients, on every
    design, also one that could not run the shape (layer norm on a persistent design)."""
    from fusedrnn.backends.triton import host

    args, diff, _ = _case(case, T=0)
    fwd, bwd = _triton_ops()
    with host.forced_design(design):
        out = fwd(*args)
        torch.testing.assert_close(out[1], args[1])
        gh = torch.randn_like(out[1])
        grads = bwd(torch.randn_like(out[0]), gh, *args[2:2 + len(schema.GRU_PARAMS)], *out[2:])
    torch.testing.assert_close(grads[1], gh)
    assert not grads[2].any()


@pytest.mark.skipif(not TRITON, reason="triton interpreter not available")
@pytest.mark.parametrize("case", [
    dict(mask="per_step", lengths=True, reverse=True, zoneout=True, B=40, H=40, design="persistent-stream",
         dtype=torch.float64, nprog=6),
    dict(bn="train", lengths=True, B=24, H=40, design="persistent", dtype=torch.float64, nprog=3),
    dict(bn="eval", mask="shared", B=24, H=40, design="persistent-stream", dtype=torch.float64, nprog=3),
    dict(mask="shared", reverse=True, B=40, H=20, design="persistent-resident", dtype=torch.float32, nprog=4),
], ids=["len-rev-zo", "bn-len", "bn-eval", "resident-fp32"])
def test_triton_persistent_with_several_row_and_column_blocks(case, monkeypatch):
    """The persistent GRU kernels on the plan an sm_90 GPU gets (B=40, H=40: two row blocks
    of 32 and three column blocks of 16, partial last blocks; batch norm: one block of all
    rows; W resident in fp32 at H=20), their programs run as threads in the interpreter so
    that the grid barrier works: the block mapping, the exchange of h and of dL/d(W_hh h)
    through global memory, the barriers and the per-row-block bias sums, forward and
    backward, against the reference."""
    from interp_grid import gpu_sized_tilings, threaded_programs
    from fusedrnn.backends.triton import config as TC, host

    case = dict(case)
    design, b, h, dtype, nprog = (case.pop(k) for k in ("design", "B", "H", "dtype", "nprog"))
    gpu_sized_tilings(monkeypatch)
    with host.forced_design(design):
        plan = TC.gru_tilings(host.shape_of(b, h, h, False, 1 if case.get("bn") else 0, dtype, gates=3),
                              TC.Device.of(torch.device("cpu"), True), design)[0]
    assert plan.design == "persistent" and plan.nprog == nprog, plan
    with host.forced_design(design), threaded_programs():
        _check_against_reference(_triton_ops, *_case(case, dtype, T=4, B=b, H=h), case,
                                 tol=None if dtype == torch.float64 else 2e-5)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_opcheck_forward(case):
    args, _, _ = _case(case)
    torch.library.opcheck(torch.ops.fusedrnn.gru_layer_forward.default, args)


def test_opcheck_backward():
    args, _, _ = _case(dict(bn="train", mask="shared", lengths=True, zoneout=True), requires_grad=False)
    out = torch.ops.fusedrnn.gru_layer_forward(*args)
    bargs = (torch.randn_like(out[0]), torch.randn_like(out[1]), *args[2:2 + len(schema.GRU_PARAMS)], *out[2:])
    torch.library.opcheck(torch.ops.fusedrnn.gru_layer_backward.default, bargs)


@pytest.mark.parametrize("case", [dict(bn="train", lengths=True, reverse=True), dict(bn="eval", mask="per_step"),
                                  dict(bn="layer", zoneout=True, mask="shared")], ids=_id)
@pytest.mark.parametrize("T_,B_", [(4, 3), (40, 32)], ids=["one-chunk", "three-chunks"])
def test_recompute_mode(case, T_, B_):
    """save_workspace=2: ws_hh_hat comes back empty, the rest as with 1, and the backward that
    rebuilds N_h's x_hat (per chunk of its ring's steps) equals the one that read it; opcheck
    on both ops in that mode."""
    args, _, _ = _case(case, requires_grad=False, T=T_, B=B_)
    full = torch.ops.fusedrnn.gru_layer_forward(*args)
    lean = torch.ops.fusedrnn.gru_layer_forward(*args[:-1], schema.SAVE_RECOMPUTE_NORM)
    assert lean[6].shape == (0, B_, 3 * H) and full[6].shape[0] == T_
    for i in (0, 1, 2, 3, 4, 5, 7):
        assert torch.equal(full[i], lean[i]), schema.GRU_FORWARD_OUTPUTS[i]
    grads = (torch.randn_like(full[0]), torch.randn_like(full[1]))
    params = args[2:2 + len(schema.GRU_PARAMS)]
    saved = torch.ops.fusedrnn.gru_layer_backward(*grads, *params, *full[2:])
    rebuilt = torch.ops.fusedrnn.gru_layer_backward(*grads, *params, *lean[2:])
    for a, b in zip(saved, rebuilt):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    if T_ == 4:
        torch.library.opcheck(torch.ops.fusedrnn.gru_layer_forward.default, (*args[:-1], schema.SAVE_RECOMPUTE_NORM))
        torch.library.opcheck(torch.ops.fusedrnn.gru_layer_backward.default, (*grads, *params, *lean[2:]))


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
    with _design(family):
        fwd, bwd = ops()
        for case in CASES:
            if not _runs(family, case):
                continue
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
