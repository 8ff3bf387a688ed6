"""The CUDA backend (fusedrnn._C CUDA kernels) on a GPU: both designs (persistent, per
step) against the float64 reference, every option; low precision within 2x of
torch.nn.LSTM's own error at that dtype.  Run by benchmarks/gpu_check.sh."""

import itertools
import os

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import ops
from fusedrnn.backends import compiled

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(not compiled.has_kernel("lstm_layer_forward", "CUDA"),
                                 reason="fusedrnn._C built without CUDA kernels")]

DEV = "cuda"


@pytest.fixture(params=["auto", "step"])
def design(request, monkeypatch):
    """Run each test with the design the layout picks, and with the per-step design forced."""
    if request.param == "step":
        monkeypatch.setenv("FUSEDRNN_DESIGN", "step")
    else:
        monkeypatch.delenv("FUSEDRNN_DESIGN", raising=False)
    return request.param


def _inputs(T, B, H, P, mask_kind, bn_mode, lengths, dtype, seed=0, S=4):
    g = torch.Generator().manual_seed(seed)
    R = P or H
    G = 4 * H
    r = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g, dtype=torch.float64))  # noqa: E731
    d = dict(xp=r(T, B, G), h0=r(B, R, scale=0.5), c0=r(B, H, scale=0.5), w_hh=r(G, R, scale=1 / R ** 0.5),
             w_hr=r(P, H, scale=1 / H ** 0.5) if P else None)
    d["mask"] = None
    if mask_kind:
        shape = (B, R) if mask_kind == "shared" else (T, B, R)
        d["mask"] = torch.bernoulli(torch.full(shape, 0.75, dtype=torch.float64), generator=g) / 0.75
    d["lengths"] = None
    if lengths:
        L = torch.randint(2, T + 1, (B,), generator=g)
        L[0] = T
        d["lengths"] = L
    d["bn"] = None
    if bn_mode:
        d["bn"] = dict(weight_x=torch.ones(G, dtype=torch.float64), weight_h=0.1 + r(G).abs(),
                       weight_c=0.1 + r(H).abs(), bias_c=r(H, scale=0.1),
                       running_mean_x=torch.zeros(S, G, dtype=torch.float64), running_var_x=torch.ones(S, G, dtype=torch.float64),
                       running_mean_h=r(S, G, scale=0.1), running_var_h=0.5 + r(S, G).abs(),
                       running_mean_c=r(S, H, scale=0.1), running_var_c=0.5 + r(S, H).abs(),
                       training=bn_mode == "train", momentum=0.1, eps=1e-5)
    return d


def _zoneout(d, device, dtype):
    """d["zoneout"]: None, ("train", zc, zh) float64 0 / 1 weights, or ("eval", (rate_c, rate_h))."""
    z = d.get("zoneout")
    if z is None:
        return None
    if z[0] == "eval":
        T, B, G = d["xp"].shape
        R = d["h0"].shape[1]
        return ops.zoneout_weights(z[1], T, B, G // 4, R, torch.empty(0, device=device, dtype=dtype), False)
    return ops.Zoneout(z[1].to(device=device, dtype=dtype), z[2].to(device=device, dtype=dtype))


def _run(d, backend, device, dtype, reverse=False, grad_seed=1):
    """The recurrence on (device, dtype); returns outputs and gradients as float64 CPU tensors."""
    conv = lambda t: None if t is None else t.to(device=device, dtype=dtype).detach().requires_grad_(t.is_floating_point())  # noqa: E731
    xp, h0, c0, w_hh, w_hr = (conv(d[k]) for k in ("xp", "h0", "c0", "w_hh", "w_hr"))
    mask = None if d["mask"] is None else d["mask"].to(device=device, dtype=dtype)
    lengths = None if d["lengths"] is None else d["lengths"].to(device)
    bn = None
    if d["bn"] is not None:
        b = {k: (v.to(device=device, dtype=dtype).clone() if torch.is_tensor(v) else v) for k, v in d["bn"].items()}
        for k in ("weight_h", "weight_c", "bias_c"):
            b[k].requires_grad_()
        bn = ops.RecurrentBN(**b)
    if d.get("ln") is not None:
        ln = {k: v.to(device=device, dtype=dtype).clone().requires_grad_() for k, v in d["ln"].items()}
        bn = ops.RecurrentLN(weight_x=None, bias_x=None, eps=1e-5, **ln)
    y, h_n, c_n = ops.lstm_recurrence(xp, h0, c0, w_hh, w_hr, mask=mask, lengths=lengths, reverse=reverse, norm=bn,
                                      zoneout=_zoneout(d, device, dtype), backend=backend)
    g = torch.Generator().manual_seed(grad_seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(device)).sum()
               for t in (y, h_n, c_n))
    wrt = [xp, h0, c0, w_hh] + ([w_hr] if w_hr is not None else [])
    if d["bn"] is not None:
        wrt += [bn.weight_h, bn.weight_c, bn.bias_c]
    if d.get("ln") is not None:
        wrt += [bn.weight_h, bn.bias_h, bn.weight_c, bn.bias_c]
    grads = torch.autograd.grad(loss, wrt)
    cpu = lambda t: t.detach().double().cpu()  # noqa: E731
    return [cpu(y), cpu(h_n), cpu(c_n)] + [cpu(t) for t in grads]


CASES = list(itertools.product([None, "shared", "per_step"], [None, "train", "eval"], [0, 8], [False, True],
                               [False, True]))


@pytest.mark.parametrize("mask_kind,bn_mode,proj,lengths,reverse", CASES,
                         ids=[f"mask{m}-bn{b}-P{p}-len{int(l)}-rev{int(r)}" for m, b, p, l, r in CASES])
def test_float64_matches_reference(mask_kind, bn_mode, proj, lengths, reverse, design):
    d = _inputs(T=7, B=5, H=16, P=proj, mask_kind=mask_kind, bn_mode=bn_mode, lengths=lengths, dtype=torch.float64)
    ref = _run(d, "reference", "cpu", torch.float64, reverse)
    got = _run(d, "cuda", DEV, torch.float64, reverse)
    for i, (a, b) in enumerate(zip(got, ref)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"output/grad {i}: {m}")


LP_CASES = list(itertools.product([None, "shared", "per_step"], [None, "train", "eval"], [False, True], [False, True]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "tf32"])
@pytest.mark.parametrize("mask_kind,bn_mode,lengths,reverse", LP_CASES,
                         ids=[f"mask{m}-bn{b}-len{int(l)}-rev{int(r)}" for m, b, l, r in LP_CASES])
def test_low_precision_every_option(mask_kind, bn_mode, lengths, reverse, dtype, design, cuda_matmul):
    """Every option through both designs in bf16 and TF32 (the persistent kernels run only in
    low precision), against float64 with a loose absolute tolerance."""
    cuda_matmul("allow_tf32", True)
    d = _inputs(T=9, B=6, H=32, P=0, mask_kind=mask_kind, bn_mode=bn_mode, lengths=lengths, dtype=dtype)
    ref = _run(d, "reference", "cpu", torch.float64, reverse)
    got = _run(d, "cuda", DEV, dtype, reverse)
    tol = 0.08 if dtype == torch.bfloat16 else 0.02
    for i, (a, b) in enumerate(zip(got, ref)):
        scale = b.abs().max().item() + 1.0
        assert (a - b).abs().max().item() <= tol * scale, (i, (a - b).abs().max().item(), scale)


def _torch_error(T, B, H, dtype):
    """Max abs error of torch.nn.LSTM (cuDNN) at dtype against its float64 result: y and dx.
    float32 without TF32 (cuDNN's default allows it; our float32 runs without TF32 here)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        return _torch_error_at(T, B, H, dtype)
    finally:
        torch.backends.cudnn.allow_tf32 = old


def _torch_error_at(T, B, H, dtype):
    torch.manual_seed(0)
    lstm = nn.LSTM(H, H).double().to(DEV)
    x = torch.randn(T, B, H, dtype=torch.float64, device=DEV, requires_grad=True)
    gy = torch.randn(T, B, H, dtype=torch.float64, device=DEV)
    y = lstm(x)[0]
    (gx,) = torch.autograd.grad(y, x, gy)
    low = nn.LSTM(H, H).to(device=DEV, dtype=dtype)
    low.load_state_dict({k: v.to(dtype) for k, v in lstm.state_dict().items()})
    xl = x.detach().to(dtype).requires_grad_()
    yl = low(xl)[0]
    (gxl,) = torch.autograd.grad(yl, xl, gy.to(dtype))
    return (yl.double() - y).abs().max().item(), (gxl.double() - gx).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("variant", ["plain", "variational+bn"])
@pytest.mark.parametrize("T,B,H", [(64, 16, 128), (32, 8, 256)])
def test_low_precision_within_twice_torch(dtype, variant, T, B, H, design):
    """Module level, our error vs float64 <= 2x cuDNN's own error at that dtype (+ a floor)."""
    err_y_torch, err_g_torch = _torch_error(T, B, H, dtype)
    opts = dict(recurrent_dropout=0.25, variational=True, batch_norm=True) if variant != "plain" else {}
    torch.manual_seed(1)
    ref = fusedrnn.LSTM(H, H, backend="reference", **opts).double().to(DEV)
    ours = fusedrnn.LSTM(H, H, backend="cuda", **opts).to(device=DEV, dtype=dtype)
    ours.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, H, dtype=torch.float64, device=DEV, requires_grad=True)
    gy = torch.randn(T, B, H, dtype=torch.float64, device=DEV)
    torch.manual_seed(7)
    y = ref(x)[0]
    (gx,) = torch.autograd.grad(y, x, gy)
    xl = x.detach().to(dtype).requires_grad_()
    torch.manual_seed(7)  # the same masks
    yl = ours(xl)[0]
    (gxl,) = torch.autograd.grad(yl, xl, gy.to(dtype))
    err_y = (yl.double() - y).abs().max().item()
    err_g = (gxl.double() - gx).abs().max().item()
    floor = 1e-6 if dtype == torch.float32 else 1e-3
    assert err_y <= 2 * err_y_torch + floor, (err_y, err_y_torch)
    assert err_g <= 2 * err_g_torch + floor * 10, (err_g, err_g_torch)


@pytest.mark.parametrize("kind", ["batched", "packed"])
def test_module_matches_nn_lstm_fp32_strict(kind, design, monkeypatch, cuda_matmul):
    """fp32 without TF32: the drop-in module equals cuDNN's nn.LSTM to fp32 rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cuda_matmul("allow_tf32", False)
    torch.manual_seed(0)
    ref = nn.LSTM(24, 32, num_layers=2, bidirectional=True, batch_first=True).to(DEV)
    ours = fusedrnn.LSTM(24, 32, num_layers=2, bidirectional=True, batch_first=True, backend="cuda").to(DEV)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 11, 24, device=DEV, requires_grad=True)
    inp = x
    if kind == "packed":
        inp = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([11, 9, 9, 4, 3, 1]), batch_first=True)
    out_r, (h_r, c_r) = ref(inp)
    out_o, (h_o, c_o) = ours(inp)
    data = lambda o: o.data if hasattr(o, "batch_sizes") else o  # noqa: E731
    for a, b in ((data(out_o), data(out_r)), (h_o, h_r), (c_o, c_r)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    loss_r = data(out_r).square().sum() + h_r.sum() + c_r.sum()
    loss_o = data(out_o).square().sum() + h_o.sum() + c_o.sum()
    for a, b in zip(torch.autograd.grad(loss_o, [x] + list(ours.parameters())),
                    torch.autograd.grad(loss_r, [x] + list(ref.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_persistent_design_is_chosen_for_the_anchor_shapes():
    """The layout accepts the FlashRNN point (B=16, T=1024, H=768, bf16) and the grid's large
    shapes: a silent fallback to the per-step design would cost most of the speed."""
    if os.environ.get("FUSEDRNN_DESIGN") == "step":
        pytest.skip("per-step forced")
    for dtype, B, H in ((torch.bfloat16, 16, 768), (torch.float16, 8, 1024), (torch.bfloat16, 256, 1024),
                        (torch.bfloat16, 2, 768)):
        like = torch.empty(0, dtype=dtype, device=DEV)
        ok, why, *_ = torch.ops.fusedrnn.cuda_persistent_layout(like, B, H, H, False, True)
        assert ok, (dtype, B, H, why)


def test_forced_persistent_design_refuses_what_it_cannot_run(monkeypatch):
    """FUSEDRNN_DESIGN=persistent (both GPU backends' switch) raises, naming the switch and why,
    where the persistent design cannot run (a projection), instead of running per-step."""
    monkeypatch.setenv("FUSEDRNN_DESIGN", "persistent")
    m = fusedrnn.LSTM(16, 32, proj_size=8, backend="cuda", device=DEV, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="FUSEDRNN_DESIGN=persistent.*projection"):
        m(torch.randn(5, 4, 16, device=DEV, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cell_and_batch_norm_ops_match_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    gates, cx = torch.randn(6, 40, generator=g), torch.randn(6, 10, generator=g)
    cpu = torch.ops.fusedrnn.lstm_cell_forward(gates.double(), cx.double())
    gpu = torch.ops.fusedrnn.lstm_cell_forward(gates.to(DEV, dtype), cx.to(DEV, dtype))
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(gpu[:2], cpu[:2]):
        torch.testing.assert_close(a.double().cpu(), b, **tol)
    v = torch.randn(5, 4, 12, generator=g, dtype=torch.float64)
    w, bias = torch.rand(12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 3, 2, 5])
    ref = torch.ops.fusedrnn.batch_norm_steps_forward(v, w, bias, lengths, True, None, None, True, 1e-5)
    out = torch.ops.fusedrnn.batch_norm_steps_forward(v.to(DEV, dtype), w.to(DEV, dtype), bias.to(DEV, dtype),
                                                      lengths.to(DEV), True, None, None, True, 1e-5)
    torch.testing.assert_close(out[0].double().cpu(), ref[0], **tol)


# ---- zoneout and layer norm (compiled, not yet validated on a GPU: FUSEDRNN_CUDA_UNVERIFIED=1
# admits them) ----
ZO_CASES = [(None, None, 0, False, False, "train", False), ("shared", "train", 0, True, True, "train", False),
            ("per_step", "eval", 8, True, False, "eval", False), (None, "train", 8, False, True, "train", False),
            ("shared", None, 0, True, False, "eval", False), (None, None, 0, False, False, None, True),
            ("per_step", None, 8, True, True, "train", True), ("shared", None, 0, True, True, "eval", True)]


def _with_zoneout(d, kind, ln=False, seed=3):
    """d with zoneout weights of kind ("train" / "eval" / None) and, if ln, layer-norm parameters."""
    g = torch.Generator().manual_seed(seed)
    T, B, G = d["xp"].shape
    H, R = G // 4, d["h0"].shape[1]
    if ln:
        r = lambda n: torch.randn(n, generator=g, dtype=torch.float64)  # noqa: E731
        d["ln"] = dict(weight_h=1 + 0.2 * r(G), bias_h=0.2 * r(G), weight_c=1 + 0.2 * r(H), bias_c=0.2 * r(H))
    if kind is None:
        d["zoneout"] = None
    elif kind == "eval":
        d["zoneout"] = ("eval", (0.3, 0.2))
    else:
        d["zoneout"] = ("train", (torch.rand(T, B, H, generator=g) < 0.3).double(),
                        (torch.rand(T, B, R, generator=g) < 0.2).double())
    return d


@pytest.mark.parametrize("mask_kind,bn_mode,proj,lengths,reverse,zo,ln", ZO_CASES,
                         ids=[f"mask{m}-bn{b}-P{p}-len{int(l)}-rev{int(r)}-zo{z}-ln{int(n)}"
                              for m, b, p, l, r, z, n in ZO_CASES])
def test_zoneout_and_layer_norm_float64_match_reference(mask_kind, bn_mode, proj, lengths, reverse, zo, ln, design,
                                                        monkeypatch):
    """Zoneout (both designs) and layer norm (the per-step design's row kernels: B = 5 blocks
    of one row, H = 16) against the reference in float64, every gradient."""
    monkeypatch.setenv("FUSEDRNN_CUDA_UNVERIFIED", "1")
    d = _with_zoneout(_inputs(T=7, B=5, H=16, P=proj, mask_kind=mask_kind, bn_mode=bn_mode, lengths=lengths,
                              dtype=torch.float64), zo, ln)
    ref = _run(d, "reference", "cpu", torch.float64, reverse)
    got = _run(d, "cuda", DEV, torch.float64, reverse)
    for i, (a, b) in enumerate(zip(got, ref)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"output/grad {i}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "tf32"])
@pytest.mark.parametrize("zo,ln", [("train", False), ("eval", False), ("train", True)])
def test_zoneout_and_layer_norm_low_precision(dtype, zo, ln, design, monkeypatch, cuda_matmul):
    """Zoneout at a shape the persistent layout takes (auto), layer norm on the per-step design
    (H = 256 over 256 threads per row): within 2x of the reference backend's own error at
    that dtype (cuDNN cannot run these), per output / gradient."""
    monkeypatch.setenv("FUSEDRNN_CUDA_UNVERIFIED", "1")
    cuda_matmul("allow_tf32", dtype == torch.float32)
    d = _with_zoneout(_inputs(T=16, B=16, H=256, P=0, mask_kind="shared", bn_mode=None, lengths=True,
                              dtype=torch.float64), zo, ln)
    want = _run(d, "reference", DEV, torch.float64, True)
    own = _run(d, "reference", DEV, dtype, True)
    got = _run(d, "cuda", DEV, dtype, True)
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp(min=1e-30)).item()  # noqa: E731
    for i, (a, o, w) in enumerate(zip(got, own, want)):
        assert rel(a, w) <= max(2 * rel(o, w), 1e-5), (i, rel(a, w), rel(o, w))
