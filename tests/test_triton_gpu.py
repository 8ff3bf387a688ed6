"""The triton backend on a CUDA GPU (marked gpu; run by benchmarks/gpu_check.sh).

fp32 (tf32 off), bf16 and fp16 against a float64 reference, by the relative error
||out - ref|| / ||ref|| of every output and gradient.  Budget per dtype: 2x the error that
torch.nn.LSTM (cuDNN) itself makes at that dtype on the same problem, computed the same
way (for fp32 at least 1e-5); options nn.LSTM lacks (masks, batch norm) get the same
budget on the op.  Both designs, the grid barrier with many programs, autotuning and
torch.compile.  Self-contained and small: most of the time is Triton compiling.
"""

import importlib

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

import fusedrnn  # noqa: E402
from fusedrnn.backends import reference as REF  # noqa: E402  (REF.recurrence on the op's arguments)

pytestmark = pytest.mark.gpu
TR = importlib.import_module("fusedrnn.backends.triton.backend")  # recurrence(..., design)
TH = importlib.import_module("fusedrnn.backends.triton.host")  # AUTOTUNE, the autotuners
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
T, B, I, H = 12, 16, 32, 64
_NN_ERR = {}


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def _module_errors(mod_cls_kwargs, dtype, make, cls=nn.LSTM):
    """Relative errors of (y, h_n, c_n, grads of x and every parameter) of a module in
    dtype against torch's module ``cls`` (nn.LSTM; nn.GRU: no c_n) in float64 with the same
    weights."""
    torch.manual_seed(0)
    ref = cls(I, H, **mod_cls_kwargs, device="cuda", dtype=torch.float64)
    mod = make(dtype)
    mod.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    x64 = torch.randn(T, B, I, device="cuda", dtype=torch.float64)
    w = [torch.randn(T, B, H * (2 if mod_cls_kwargs.get("bidirectional") else 1), device="cuda",
                     dtype=torch.float64)]
    outs = []
    for m, x in ((ref, x64.clone().requires_grad_()), (mod, x64.to(dtype).requires_grad_())):
        torch.manual_seed(5)  # the same masks for a regularised module in both runs
        y, state = m(x)
        states = list(state) if isinstance(state, tuple) else [state]
        loss = (y.double() * w[0]).sum() + states[0].double().pow(2).sum() + sum(c.double().sum() for c in states[1:])
        grads = torch.autograd.grad(loss, [x] + [p for p in m.parameters() if p.requires_grad])
        outs.append([y] + states + list(grads))
    return [rel(a, b) for a, b in zip(outs[1], outs[0])]


def nn_lstm_error(dtype):
    """What torch.nn.LSTM (cuDNN) errs by at this dtype, per output / gradient (max)."""
    if dtype not in _NN_ERR:
        errs = _module_errors({}, dtype, lambda dt: nn.LSTM(I, H, device="cuda", dtype=dt))
        _NN_ERR[dtype] = max(errs)
    return _NN_ERR[dtype]


def budget(dtype, err=None):
    b = 2 * (nn_lstm_error(dtype) if err is None else err)
    return max(b, 1e-5) if dtype == torch.float32 else b


def nn_gru_error(dtype):
    """What torch.nn.GRU (cuDNN) errs by at this dtype (max over outputs and gradients)."""
    key = ("gru", dtype)
    if key not in _NN_ERR:
        _NN_ERR[key] = max(_module_errors({}, dtype, lambda dt: nn.GRU(I, H, device="cuda", dtype=dt), nn.GRU))
    return _NN_ERR[key]


GRU_OPTIONS = {"plain": {}, "v+bn": dict(recurrent_dropout=0.25, variational=True, batch_norm=True, bn_max_steps=T),
               "zoneout+wd": dict(zoneout=0.2, weight_dropout=0.2), "ln": dict(layer_norm=True)}


GRU_CASES = ([(dt, d, "plain") for dt in DTYPES for d in ("auto", "step")]
             + [(torch.bfloat16, d, o) for o in ("v+bn", "zoneout+wd", "ln") for d in ("auto", "step")]
             + [(torch.bfloat16, "persistent-stream", o) for o in ("plain", "v+bn")])


@pytest.mark.parametrize("dtype,design,options", GRU_CASES, ids=[f"{dt}-{d}-{o}" for dt, d, o in GRU_CASES])
def test_gru_within_2x_of_nn_gru(dtype, design, options):
    """fusedrnn.GRU on the Triton kernels (auto: persistent at this shape, 4 programs, W
    resident; layer norm per step; also persistent with W streamed, and per step) against a
    float64 module with the same weights and masks: nn.GRU for the plain GRU, the reference
    backend's GRU for the options; within 2x of what nn.GRU (cuDNN) errs by at this dtype.
    The options in bf16 only (each case compiles its own kernels)."""
    opts = GRU_OPTIONS[options]

    def ours(dt):
        return fusedrnn.GRU(I, H, device="cuda", dtype=dt, backend="triton", **opts).train()

    if opts:  # the float64 side: the reference backend with the same options (nn.GRU has none)
        def ref_cls(i, h, device, dtype):
            return fusedrnn.GRU(i, h, device=device, dtype=dtype, backend="reference", **opts).train()
    else:
        ref_cls = nn.GRU
    with TH.forced_design(design):
        errs = _module_errors({}, dtype, ours, ref_cls)
    assert max(errs) <= budget(dtype, nn_gru_error(dtype)), (errs, nn_gru_error(dtype))


@pytest.mark.parametrize("design", ["auto", "step"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_module_within_2x_of_nn_lstm(dtype, design, monkeypatch):
    monkeypatch.setattr(TH, "AUTOTUNE", False)
    with TH.forced_design(design):  # around the backward too (autograd runs it on its own thread)
        errs = _module_errors({}, dtype,
                              lambda dt: fusedrnn.LSTM(I, H, device="cuda", dtype=dt, backend="triton"))
    assert max(errs) <= budget(dtype), (errs, nn_lstm_error(dtype))


def _op_case(dtype, seed=0, Bn=B, Hn=H, P=24, with_bn=True):
    """Inputs in float64 and a builder that rounds them to a dtype.  Batch norm over very
    few rows is ill-conditioned (two rows normalise to +-1 whatever their distance), so
    three quarters of the rows run the whole sequence; the rest stop at random lengths."""
    g = torch.Generator().manual_seed(seed)
    R, G = P or Hn, 4 * Hn

    def r(*s, scale=1.0):
        return scale * torch.randn(*s, generator=g, dtype=torch.float64)

    from fusedrnn.core.contract import RecurrentBN
    lengths = torch.randint(1, T + 1, (Bn,), generator=g)
    lengths[: (3 * Bn) // 4] = T
    mask = torch.bernoulli(torch.full((Bn, R), 0.75, dtype=torch.float64), generator=g) / 0.75
    S = 6
    bn = dict(weight_x=0.1 + torch.rand(G, generator=g, dtype=torch.float64),
              weight_h=0.1 + torch.rand(G, generator=g, dtype=torch.float64),
              weight_c=0.1 + torch.rand(Hn, generator=g, dtype=torch.float64),
              bias_c=torch.rand(Hn, generator=g, dtype=torch.float64) - 0.5,
              running_mean_x=torch.zeros(S, G), running_var_x=torch.ones(S, G),
              running_mean_h=torch.zeros(S, G, dtype=torch.float64),
              running_var_h=torch.ones(S, G, dtype=torch.float64),
              running_mean_c=torch.zeros(S, Hn, dtype=torch.float64),
              running_var_c=torch.ones(S, Hn, dtype=torch.float64))
    base = dict(xp=r(T, Bn, G), h0=r(Bn, R), c0=r(Bn, Hn), w_hh=r(G, R, scale=Hn ** -0.5),
                w_hr=r(P, Hn, scale=Hn ** -0.5) if P else None, mask=mask, lengths=lengths)

    def build(dt):
        d = {k: (None if v is None else v.to("cuda", dt if v.is_floating_point() else v.dtype))
             for k, v in base.items()}
        for k in ("xp", "h0", "c0", "w_hh", "w_hr"):
            if d[k] is not None:
                d[k].requires_grad_()
        b = None
        leaves = [d[k] for k in ("xp", "h0", "c0", "w_hh", "w_hr") if d[k] is not None]
        if with_bn:
            b = RecurrentBN(**{k: v.to("cuda", dt) for k, v in bn.items()}, training=True,
                            momentum=0.1, eps=1e-5)
            for t in (b.weight_h, b.weight_c, b.bias_c):
                t.requires_grad_()
            leaves += [b.weight_h, b.weight_c, b.bias_c]
        args = (d["xp"], d["h0"], d["c0"], d["w_hh"], d["w_hr"], d["mask"], d["lengths"], True, b)
        return args, leaves

    return build


def _op_errors(build, dtype, design):
    """{name: relative error} of y, h_n, c_n, the batch statistics and every gradient."""
    outs = []
    for dt, fn in ((torch.float64, REF.recurrence),
                   (dtype, lambda *a: TR.recurrence(*a, design=design))):
        args, leaves = build(dt)
        res = fn(*args)
        g = torch.Generator(device="cuda").manual_seed(3)
        loss = sum((t.double() * torch.randn(t.shape, generator=g, device="cuda",
                                             dtype=torch.float64)).sum() for t in res[:3])
        grads = torch.autograd.grad(loss, leaves)
        named = dict(zip(("y", "h_n", "c_n"), res[:3]))
        if res.stats is not None:
            named.update(zip(("mean_h", "var_h", "mean_c", "var_c"), res.stats))
        named.update((f"grad{i}", gr) for i, gr in enumerate(grads))
        outs.append(named)
    return {k: rel(outs[1][k], outs[0][k]) for k in outs[0]}


@pytest.mark.parametrize("design", ["auto", "step"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_option_against_float64(dtype, design, monkeypatch):
    """Shared mask, batch norm (train), proj_size, lengths and reverse together."""
    monkeypatch.setattr(TH, "AUTOTUNE", False)
    errs = _op_errors(_op_case(dtype), dtype, design)
    assert max(errs.values()) <= budget(dtype), (errs, budget(dtype))


def test_persistent_many_programs_deterministic(monkeypatch):
    """B = 48, H = 256: 2 row blocks x 16 hidden blocks = 32 programs through the grid
    barrier; the result is bitwise the same on every run and matches the per-step design."""
    monkeypatch.setattr(TH, "AUTOTUNE", False)
    torch.manual_seed(0)
    Bn, Hn = 48, 256
    xp = torch.randn(40, Bn, 4 * Hn, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(Bn, Hn, device="cuda", dtype=torch.bfloat16)
    c0 = torch.randn(Bn, Hn, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(4 * Hn, Hn, device="cuda") * Hn ** -0.5).to(torch.bfloat16)
    args = (xp, h0, c0, w, None, None, None, False, None)
    from fusedrnn.backends.triton import config as C
    tiling = C.tiling(C.Shape(Bn, Hn, Hn, False, False, 2), C.Device.of(xp.device, False))
    assert tiling.design == "persistent" and tiling.nprog >= 32
    runs = [TR.recurrence(*args, design="persistent") for _ in range(3)]
    for r in runs[1:]:
        assert torch.equal(r.y, runs[0].y) and torch.equal(r.c_n, runs[0].c_n)
    step = TR.recurrence(*args, design="step")
    assert rel(runs[0].y, step.y) < 1e-2
    ref = REF.recurrence(*(a.double() if torch.is_tensor(a) else a for a in args))
    assert rel(runs[0].y, ref.y) < 2e-2


def test_oversized_persistent_grid_is_refused_not_hung(monkeypatch):
    """The persistent grid launches cooperatively: a grid that cannot be co-resident is refused
    by the driver (an error) instead of spinning forever at its first barrier.  The SM count
    the tiling heuristic sees is inflated so that it tiles with more programs than the GPU holds."""
    from fusedrnn.backends.triton import config as C
    if not TH.COOPERATIVE:
        pytest.skip("this Triton has no cooperative launch")
    monkeypatch.setattr(TH, "AUTOTUNE", False)
    real = C.Device.of(torch.device("cuda"), False)
    big = C.Device(sm_count=100000, smem_per_block=real.smem_per_block, regs_per_sm=real.regs_per_sm,
                   interpret=False)
    monkeypatch.setattr(C, "_cuda_device", lambda index: big)
    # 8 row blocks of 32 x twice the SM count in hidden blocks of 16: more threads than every
    # SM together can hold (2048 each), whatever the registers and shared memory allow
    Bn, Hn = 256, 16 * (2 * real.sm_count)
    tiling = C.tiling(C.Shape(Bn, Hn, Hn, False, False, 2), big)
    assert tiling.design == "persistent" and tiling.nprog * tiling.num_warps * 32 > 2048 * real.sm_count, tiling
    xp = torch.zeros(2, Bn, 4 * Hn, device="cuda", dtype=torch.bfloat16)
    h0 = torch.zeros(Bn, Hn, device="cuda", dtype=torch.bfloat16)
    w = torch.zeros(4 * Hn, Hn, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(Exception, match="(?i)cooperative|too many|too large|launch"):
        TR.recurrence(xp, h0, h0, w, None, None, None, False, None, design="persistent-stream")
        torch.cuda.synchronize()


@pytest.mark.timeout_s(150)  # compiles and times 4 forward and 4 backward configs, cold
def test_autotuned_configs(monkeypatch):
    monkeypatch.setattr(TH, "AUTOTUNE", True)
    build = _op_case(torch.bfloat16, Bn=40, Hn=128, P=0, with_bn=False)  # 4 persistent configs
    errs = _op_errors(build, torch.bfloat16, "auto")
    assert max(errs.values()) <= budget(torch.bfloat16), errs
    assert TH._TUNERS, "no autotuner ran"


@pytest.mark.inductor
def test_auto_dispatch_and_compile(monkeypatch):
    """backend='auto' can pick triton on CUDA; torch.compile(fullgraph=True) traces the
    module through the triton_op with no graph break and matches eager."""
    assert "triton" in fusedrnn.available_backends("cuda")
    monkeypatch.setattr(TH, "AUTOTUNE", False)
    torch.manual_seed(0)
    mod = fusedrnn.LSTM(I, H, device="cuda", backend="triton")
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    y_ref, (h_ref, c_ref) = mod(x)
    compiled = torch.compile(mod, fullgraph=True)
    y, (h, c) = compiled(x)
    assert rel(y, y_ref) < 1e-5 and rel(c, c_ref) < 1e-5
    (g,) = torch.autograd.grad(y.sum() + c.sum(), x)
    (g_ref,) = torch.autograd.grad(y_ref.sum() + c_ref.sum(), x)
    assert rel(g, g_ref) < 1e-5


def _zoneout_ln_run(dt, backend, ln, design=None, seed=0, Bn=B, Hn=H):
    """y, h_n, c_n and every gradient of the recurrence with zoneout (training weights), a
    shared mask, lengths and reverse, and layer norm if ln, in dtype dt (inputs drawn in
    float64 and rounded: the same data for every run)."""
    import contextlib

    from fusedrnn import ops

    g = torch.Generator().manual_seed(seed)
    G = 4 * Hn

    def r(*s, scale=1.0):
        return (scale * torch.randn(*s, generator=g, dtype=torch.float64)).to("cuda", dt)

    leaves = [r(T, Bn, G), r(Bn, Hn), r(Bn, Hn), r(G, Hn, scale=Hn ** -0.5)]
    lens = torch.randint(1, T + 1, (Bn,), generator=g).cuda()
    mask = (torch.bernoulli(torch.full((Bn, Hn), 0.75, dtype=torch.float64), generator=g) / 0.75).to("cuda", dt)
    zo = ops.Zoneout(*((torch.rand(T, Bn, n, generator=g, dtype=torch.float64) < p).to("cuda", dt)
                       for n, p in ((Hn, 0.3), (Hn, 0.2))))
    norm = None
    if ln:
        lnp = [1 + 0.2 * r(G), 0.2 * r(G), 1 + 0.2 * r(Hn), 0.2 * r(Hn)]
        leaves += lnp
        norm = ops.RecurrentLN(weight_x=None, bias_x=None, weight_h=lnp[0], bias_h=lnp[1], weight_c=lnp[2],
                               bias_c=lnp[3], eps=1e-5)
    for t in leaves:
        t.requires_grad_()
    ctx = TH.forced_design(design) if design else contextlib.nullcontext()
    with ctx:
        out = ops.lstm_recurrence(*leaves[:4], mask=mask, lengths=lens, reverse=True, norm=norm, zoneout=zo,
                                  backend=backend)
        gw = torch.Generator(device="cuda").manual_seed(3)
        loss = sum((t.double() * torch.randn(t.shape, generator=gw, device="cuda", dtype=torch.float64)).sum()
                   for t in out)
        grads = torch.autograd.grad(loss, leaves)
    return list(out) + list(grads)


@pytest.mark.parametrize("ln", [False, True], ids=["zoneout", "zoneout+ln"])
@pytest.mark.parametrize("design", ["auto", "step"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zoneout_and_layer_norm_against_float64(dtype, design, ln, monkeypatch):
    """Zoneout on each design and layer norm (per-step only; auto picks it) against the
    float64 reference; the bound per output is 2x the reference backend's own error at that
    dtype (torch ops on the same rounded data: cuDNN cannot run these)."""
    monkeypatch.setattr(TH, "AUTOTUNE", False)
    want = _zoneout_ln_run(torch.float64, "reference", ln)
    own = _zoneout_ln_run(dtype, "reference", ln)
    got = _zoneout_ln_run(dtype, "triton", ln, design)
    floor = 1e-5 if dtype == torch.float32 else 0.0
    for k, (a, o, w) in enumerate(zip(got, own, want)):
        assert rel(a, w) <= max(2 * rel(o, w), floor), (k, rel(a, w), rel(o, w))
