"""The triton backend against the reference backend: forward, every gradient and the batch
statistics, for every option and design, with masks fed explicitly; NaN-poisoned buffers
(conftest.py poisons torch.empty, which allocates every output and workspace); the module
path against torch.nn.LSTM; the explicit fallbacks.

On CPU the kernels run through the Triton interpreter (TRITON_INTERPRET=1, set by
conftest.py before triton is imported), in float64.  GPU tests (marked gpu) compare
fp32 / bf16 / fp16 against a float64 reference with per-dtype tolerances.
"""

import importlib
import itertools
import os

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

import fusedrnn  # noqa: E402
from fusedrnn.backends import BackendError  # noqa: E402
from fusedrnn.backends import reference as REF  # noqa: E402  (REF.recurrence: the reference on the op's arguments)
from fusedrnn.core import schema  # noqa: E402
from fusedrnn.core.contract import Config, MaskMode, NormMode, RecurrentBN  # noqa: E402

TR = importlib.import_module("fusedrnn.backends.triton.backend")  # recurrence(..., design), BACKEND
TH = importlib.import_module("fusedrnn.backends.triton.host")
TOPS = importlib.import_module("fusedrnn.backends.triton.ops")
TC = importlib.import_module("fusedrnn.backends.triton.config")
CPU_DESIGNS = ("step", "persistent", "persistent-stream")

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tests (CPU)")


def make_case(mask=None, bn=None, P=0, lengths=False, reverse=False, *, T=5, B=4, H=5, S=3,
              dtype=torch.float64, device="cpu", seed=1):
    """Inputs of the recurrence op (xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn) and
    the leaves to differentiate."""
    g = torch.Generator().manual_seed(seed)
    R, G = P or H, 4 * H

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(device, dtype)

    xp, h0, c0 = r(T, B, G).requires_grad_(), r(B, R).requires_grad_(), r(B, H).requires_grad_()
    w_hh = r(G, R, scale=0.5).requires_grad_()
    w_hr = r(P, H, scale=0.5).requires_grad_() if P else None
    lens = None
    if lengths:  # a full-length row, a length-1 row, and others; some steps have one row running
        lens = torch.tensor(([T, 1, T - 1, 2] * B)[:B], dtype=torch.int64, device=device)
    m = None
    if mask is not None:
        shape = (B, R) if mask == "shared" else (T, B, R)
        m = (torch.bernoulli(torch.full(shape, 0.7, dtype=torch.float64), generator=g) / 0.7).to(device, dtype)
    bnp = None
    if bn is not None:
        def u(*shape):
            return torch.rand(*shape, generator=g, dtype=torch.float64).to(device, dtype)
        bnp = RecurrentBN(
            weight_x=0.1 + u(G), weight_h=(0.1 + u(G)).requires_grad_(),
            weight_c=(0.1 + u(H)).requires_grad_(), bias_c=(u(H) - 0.5).requires_grad_(),
            running_mean_x=u(S, G), running_var_x=0.5 + u(S, G), running_mean_h=u(S, G) - 0.5,
            running_var_h=0.5 + u(S, G), running_mean_c=u(S, H) - 0.5, running_var_c=0.5 + u(S, H),
            training=bn == "train", momentum=0.2, eps=1e-3, step_offset=1)
    args = (xp, h0, c0, w_hh, w_hr, m, lens, reverse, bnp)
    leaves = [xp, h0, c0, w_hh] + ([w_hr] if P else []) + (
        [bnp.weight_h, bnp.weight_c, bnp.bias_c] if bn else [])
    return args, leaves


def run_and_grad(fn, args, leaves, loss_on=("y", "h_n", "c_n"), seed=5):
    res = fn(*args)
    g = torch.Generator().manual_seed(seed)
    loss = 0
    for name in loss_on:
        t = getattr(res, name)
        loss = loss + (t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t)).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return res, [torch.zeros_like(l) if gr is None else gr for gr, l in zip(grads, leaves)]


def check_against_reference(args, leaves, design, loss_on=("y", "h_n", "c_n"), tol=1e-9):
    res, grads = run_and_grad(lambda *a: TR.recurrence(*a, design=design), args, leaves, loss_on)
    ref, ref_grads = run_and_grad(REF.recurrence, args, leaves, loss_on)
    names = ["y", "h_n", "c_n"]
    pairs = list(zip(res[:3], ref[:3]))
    if ref.stats is not None:
        assert res.stats is not None
        names += ["mean_h", "var_h", "mean_c", "var_c"]
        pairs += list(zip(res.stats, ref.stats))
    names += [f"grad{i}" for i in range(len(grads))]
    pairs += list(zip(grads, ref_grads))
    for n, (a, b) in zip(names, pairs):
        assert torch.isfinite(a).all(), f"{n}: unwritten (NaN-poisoned) or non-finite elements"
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{design} {n}: {m}")


# (mask, bn, P, lengths, reverse): every option alone, then combinations.
CASES = [
    (None, None, 0, False, False),
    ("shared", None, 0, False, False),
    ("per_step", None, 0, False, False),
    (None, None, 3, False, False),
    (None, None, 0, False, True),
    (None, None, 0, True, False),
    (None, None, 0, True, True),
    (None, "train", 0, False, False),
    (None, "eval", 0, False, False),
    ("per_step", "train", 3, True, True),
    ("shared", "eval", 3, True, True),
    ("shared", "train", 0, True, False),
    ("per_step", None, 3, True, False),
]


def _id(c):
    m, bn, P, ln, rv = c
    return f"mask{m}-bn{bn}-P{P}-len{int(ln)}-rev{int(rv)}"


@cpu_only
@pytest.mark.parametrize("design", CPU_DESIGNS)
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_matches_reference(case, design):
    args, leaves = make_case(*case)
    check_against_reference(args, leaves, design)


@cpu_only
@pytest.mark.skipif(os.environ.get("FUSEDRNN_SLOW") != "1", reason="FUSEDRNN_SLOW=1 runs every combination")
@pytest.mark.parametrize("design", CPU_DESIGNS)
def test_every_combination(design):
    for case in itertools.product([None, "shared", "per_step"], [None, "train", "eval"], [0, 3],
                                  [False, True], [False, True]):
        args, leaves = make_case(*case)
        check_against_reference(args, leaves, design)


@cpu_only
@pytest.mark.parametrize("design", CPU_DESIGNS)
def test_gradients_through_final_state_only(design):
    args, leaves = make_case("per_step", "train", 3, True, True)
    check_against_reference(args, leaves, design, loss_on=("h_n", "c_n"))
    args, leaves = make_case(None, None, 0, True, False)
    check_against_reference(args, leaves, design, loss_on=("c_n",))


@cpu_only
@pytest.mark.parametrize("case", [(None, None, 0, False, False), ("per_step", "train", 0, True, True),
                                  ("shared", "eval", 18, True, False)], ids=_id)
def test_many_programs_per_step(monkeypatch, case):
    """The per-step design with several column and row blocks and K chunks (as on a GPU):
    16-wide tiles over B = 20 (BN: one row block), H = 20, P = 18."""
    def small(s, dev):
        BB = TC.pow2(s.B) if s.bn else 16
        return TC.Tiling("step", BB=BB, BH=16, BP=16, BK=16, num_warps=4, nb=-(-s.B // BB))

    monkeypatch.setattr(TC, "step_tiling", small)
    args, leaves = make_case(*case, T=3, B=20, H=20)
    check_against_reference(args, leaves, "step")


@cpu_only
@pytest.mark.parametrize("P", [0, 3])
def test_forward_and_backward_tile_the_same_grid(monkeypatch, P):
    """Backward derives its tiling from (B, H, R) as forward does (a backward tiled for
    another shape would launch a persistent grid that cannot be co-resident: in the
    interpreter, two programs, the first waiting forever for the second)."""
    seen = []
    real = TC.candidate_tilings

    def record(s, dev, design="auto"):
        seen.append(s)
        return real(s, dev, design)

    monkeypatch.setattr(TC, "candidate_tilings", record)
    args, leaves = make_case("shared", "train", P, True, True, T=3, B=3, H=20)
    check_against_reference(args, leaves, "persistent")
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0].H == 20


def test_forced_design_reaches_other_threads():
    """Autograd runs a CUDA graph's backward on its device thread: a design forced around
    loss.backward() must be the one that thread launches with."""
    import threading

    seen = []
    with TH.forced_design("step"):
        t = threading.Thread(target=lambda: seen.append(TH.current_design()))
        t.start()
        t.join()
        with TH.forced_design("persistent"):
            seen.append(TH.current_design())
        seen.append(TH.current_design())
    assert seen == ["step", "persistent", "step"] and TH.current_design() == TH._env_design()
    # blocks that overlap without nesting (two threads) each remove their own entry
    a, b = TH.forced_design("step"), TH.forced_design("persistent")
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert TH.current_design() == "persistent"
    b.__exit__(None, None, None)
    assert TH.current_design() == TH._env_design()


def test_design_switch_is_read_when_a_launch_is_planned(monkeypatch):
    """FUSEDRNN_DESIGN (both GPU backends' one design switch) is read at planning time; a
    forced_design block wins; a bad value names the switch."""
    monkeypatch.setenv("FUSEDRNN_DESIGN", "step")
    assert TH.current_design() == "step"
    with TH.forced_design("persistent"):
        assert TH.current_design() == "persistent"
    monkeypatch.setenv("FUSEDRNN_DESIGN", "fastest")
    with pytest.raises(ValueError, match="FUSEDRNN_DESIGN"):
        TH.current_design()


@cpu_only
def test_poisoned_workspace_fully_written():
    """Every element of every output and saved workspace is written (torch.empty is
    NaN-poisoned here), for each design, with lengths (finished rows) and reverse."""
    for design in CPU_DESIGNS:
        args, _ = make_case("shared", "train", 3, True, True)
        xp, h0, c0, w_hh, w_hr, m, lens, rev, bn = args
        cfg = Config.of(xp, h0, c0, w_hh, w_hr, m, lens, rev, bn)
        with TH.forced_design(design):
            outs = TOPS.lstm_layer_forward(xp, h0, c0, *schema.layer_params(cfg, w_hh, w_hr, m, lens, bn), True)
        for name, t in zip(schema.FORWARD_OUTPUTS, outs):
            assert t.numel() > 0 and not torch.isnan(t).any(), f"{design}: {name} has unwritten elements"
        # a poisoned (NaN) buffer really is NaN before the kernels run
        assert torch.isnan(torch.empty(3, dtype=torch.float64)).all()


def test_stream_pipeline_depth_fits_shared_memory():
    """The streamed K loops' pipeline (k_stages deep: operand and mask chunks [BB, BK], four W
    chunks [BK, BN] per stage) stays within half a block's shared memory for every batch
    norm batch (all rows in one per-step program) and dtype, on sm_80 and sm_90; deep where
    it fits, none where it would not (fp32 batch norm at B = 256)."""
    for dev in (TC.SM80, TC.SM90):
        for esize in (2, 4):
            for B in (1, 16, 64, 128, TC.MAX_BN_ROWS):
                for bn in (False, True):
                    s = TC.Shape(B=B, H=1024, R=1024, proj=False, bn=bn, esize=esize)
                    for t in TC.candidate_tilings(s, dev):
                        BN = max(t.BH, t.BP)
                        need = t.k_stages * (2 * t.BB * t.BK + 4 * t.BK * BN) * esize
                        assert 1 <= t.k_stages <= TC.STREAM_STAGES
                        assert t.k_stages == 1 or need <= dev.smem_per_block // 2, (dev, esize, B, bn, t)
    assert TC.step_tiling(TC.Shape(16, 512, 512, False, False, 2), TC.SM90).k_stages == 3
    assert TC.step_tiling(TC.Shape(TC.MAX_BN_ROWS, 1024, 1024, False, True, 4), TC.SM90).k_stages == 1


@cpu_only
def test_no_save_without_grad():
    args, _ = make_case("shared", None, 3, True, True)
    with torch.no_grad():
        for design in CPU_DESIGNS:
            res = TR.recurrence(*args, design=design)
            ref = REF.recurrence(*args)
            for a, b in zip(res[:3], ref[:3]):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@cpu_only
def test_float32_tolerance():
    args, leaves = make_case("per_step", "train", 3, True, True, dtype=torch.float32)
    res, grads = run_and_grad(lambda *a: TR.recurrence(*a, design="persistent"), args, leaves)
    args64 = tuple(a.detach().double().requires_grad_(a.requires_grad) if torch.is_tensor(a) and a.is_floating_point() else a
                   for a in args[:7]) + args[7:]
    bn = args[8]
    bn64 = RecurrentBN(**{k: (v.detach().double().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v)
                          for k, v in vars(bn).items()})
    args64 = args64[:8] + (bn64,)
    leaves64 = [args64[i] for i in range(5)] + [bn64.weight_h, bn64.weight_c, bn64.bias_c]
    ref, ref_grads = run_and_grad(REF.recurrence, args64, leaves64)
    for a, b in list(zip(res[:3], ref[:3])) + list(zip(grads, ref_grads)):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@cpu_only
@pytest.mark.parametrize("design", ["step", "persistent"])
@pytest.mark.parametrize("case", [dict(), dict(mask="shared", lengths=True, reverse=True), dict(bn="train", P=3)],
                         ids=["plain", "mask-len-rev", "bn-proj"])
def test_half_precision_exchange(design, case):
    """fp16 models keep the h states and dL/d(W_hh h m) in 16 bits (the exchange between
    programs, and the dW_hh GEMM in the model's dtype as cuDNN): every output and gradient
    within 2x the reference's own fp16 error plus one fp16 rounding, against float64.  (The
    backend serves fp16 on CUDA only; the interpreter's fp16 dots are exact enough here.)"""
    args, leaves = make_case(**case, T=6, B=4, H=8, dtype=torch.float16)
    res, grads = run_and_grad(lambda *a: TR.recurrence(*a, design=design), args, leaves)
    own, own_grads = run_and_grad(REF.recurrence, args, leaves)
    args64, leaves64 = make_case(**case, T=6, B=4, H=8, dtype=torch.float64)
    ref, ref_grads = run_and_grad(REF.recurrence, args64, leaves64)
    names = ["y", "h_n", "c_n"] + [f"grad{i}" for i in range(len(grads))]
    for n, a, o, b in zip(names, list(res[:3]) + grads, list(own[:3]) + own_grads, list(ref[:3]) + ref_grads):
        assert a.dtype == torch.float16, n
        err, bound = (a.double() - b).abs().max().item(), 2 * (o.double() - b).abs().max().item()
        bound += 2 * torch.finfo(torch.float16).eps * b.abs().max().item()
        assert err <= bound, f"{design} {n}: {err:.2e} > {bound:.2e}"
    xp, h0, c0, w_hh, w_hr, m, lens, rev, bn = args
    cfg = Config.of(xp, h0, c0, w_hh, w_hr, m, lens, rev, bn)
    with TH.forced_design(design), torch.no_grad():
        outs = TOPS.lstm_layer_forward(xp, h0, c0, *schema.layer_params(cfg, w_hh, w_hr, m, lens, bn), True)
    ws = dict(zip(schema.FORWARD_OUTPUTS, outs))
    assert ws["ws_h"].dtype == torch.float16 and ws["ws_c"].dtype == torch.float32


# ---- the module path, dispatch and fallbacks ----------------------------------------


@cpu_only
def test_module_matches_nn_lstm():
    torch.manual_seed(0)
    kw = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=4,
              dtype=torch.float64)
    ref = nn.LSTM(**kw)
    mod = fusedrnn.LSTM(**kw, backend="triton")
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 3, 5, 1])
    h0 = torch.randn(4, 4, 4, dtype=torch.float64)
    c0 = torch.randn(4, 4, 5, dtype=torch.float64)
    outs = []
    for m in (ref, mod):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, (h, c) = m(packed, (h0, c0))
        loss = (y.data * torch.arange(y.data.numel(), dtype=torch.float64).view_as(y.data).sin()).sum() \
            + h.pow(2).sum() + c.sum()
        grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
        outs.append([y.data, h, c] + list(grads))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@cpu_only
def test_module_regularizers_and_explain():
    torch.manual_seed(0)
    mod = fusedrnn.LSTM(3, 5, batch_norm=True, recurrent_dropout=0.3, variational=True,
                        dtype=torch.float64, backend="triton")
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    torch.manual_seed(1)
    y = mod(x)[0]
    ref = fusedrnn.LSTM(3, 5, batch_norm=True, recurrent_dropout=0.3, variational=True,
                        dtype=torch.float64, backend="reference")
    ref.load_state_dict(mod.state_dict())
    torch.manual_seed(1)
    y_ref = ref(x)[0]
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    assert "layer_l0: triton" in fusedrnn.explain(mod, x)


def test_unavailable_and_unsupported_reasons():
    be = TR.BACKEND
    cpu = be.unavailable_reason(torch.device("cpu"))
    if TH.INTERPRET:
        assert cpu is None
        assert "interpreter" in be.unsupported_reason(Config.build("cpu", torch.bfloat16, 5, 2, 4, 4))
    else:
        assert "CUDA" in cpu
    cfg = Config.build("cpu", torch.float32, 5, 300, 4, 4, norm=NormMode.BATCH_TRAIN)
    assert "B=300" in be.unsupported_reason(cfg)
    assert be.cell_unsupported_reason(cfg)


@cpu_only
def test_batch_norm_fallback_is_explicit():
    """BN with B > MAX_BN_ROWS: backend='triton' raises naming the reason; explain reports it."""
    lstm = fusedrnn.LSTM(2, 3, batch_norm=True, backend="triton")
    x = torch.randn(2, TC.MAX_BN_ROWS + 1, 2)
    with pytest.raises(BackendError, match="B=257"):
        lstm(x)
    lstm.backend = "auto"
    report = fusedrnn.explain(lstm, x)
    assert "triton" not in report.split("layer_l0:")[1].split("\n")[0]


def test_interpreter_was_set_before_triton_import():
    """conftest.py sets TRITON_INTERPRET=1 on machines without CUDA before triton is
    imported: the kernels are then interpreted functions."""
    if torch.cuda.is_available():
        assert not TH.INTERPRET
    else:
        assert TH.INTERPRET


@cpu_only
def test_torch_compile_fullgraph():
    """torch.compile traces the module through the op (fake kernel, autograd formula) with
    no graph break.  Under the interpreter the op is an opaque custom op."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    mod = fusedrnn.LSTM(3, 5, dtype=torch.float64, backend="triton")
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    y, (h, c) = compiled(x)
    y_ref, (h_ref, c_ref) = mod(x)
    torch.testing.assert_close(y, y_ref)
    (g,) = torch.autograd.grad(y.sum() + c.sum(), x)
    (g_ref,) = torch.autograd.grad(y_ref.sum() + c_ref.sum(), x)
    torch.testing.assert_close(g, g_ref)


@cpu_only
def test_tiling_heuristic():
    gpu = TC.SM90
    s = TC.Shape(B=64, H=512, R=512, proj=False, bn=False, esize=2)
    t = TC.tiling(s, gpu)
    assert t.design == "persistent" and t.nprog <= gpu.sm_count
    big = TC.Shape(B=64, H=8192, R=8192, proj=False, bn=False, esize=2)
    assert TC.tiling(big, gpu).design == "step"
    with pytest.raises(ValueError, match="persistent"):
        TC.tiling(big, gpu, "persistent")
    # the interpreter: persistent launches are one program
    assert TC.tiling(s, TC.Device.of(torch.device("cpu"), True)).nprog == 1
