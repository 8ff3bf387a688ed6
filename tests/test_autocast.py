"""torch.autocast: y and h_n in the autocast dtype, c_n (and a cell's cy) in float32 (the
cell state is never rounded to 16 bits), values and gradients near a float32 run; bf16 on
the CPU backends, fp16 / bf16 on a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

import fusedrnn
from helpers import CPU_BACKENDS, cell_backend

I, H = 3, 4


AUTOCAST_CPU = [b for b in ["auto"] + CPU_BACKENDS]


@pytest.mark.parametrize("backend", AUTOCAST_CPU)
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, proj_size=2),
                                dict(recurrent_dropout=0.25, variational=True, batch_norm=True)],
                         ids=["plain", "L2-bd-proj", "v+bn"])
def test_autocast_bf16_on_cpu(backend, kw):
    """y and h_n in bfloat16 (as nn.LSTM's under autocast), c_n in float32; values and the
    float32 parameters' gradients close to a float32 run (bf16 GEMM inputs); backward works."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(I, H, backend=backend, **kw)
    x = torch.randn(6, 16, I, requires_grad=True)  # B = 16: batch norm is ill-conditioned on tiny batches
    torch.manual_seed(1)
    y32, (h32, c32) = m(x)
    w = torch.randn(y32.shape)
    g32 = torch.autograd.grad((y32 * w).sum() + c32.sum(), [x] + list(m.parameters()))
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(x)
    assert (y.dtype, h.dtype, c.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)
    g = torch.autograd.grad((y.float() * w).sum() + c.sum(), [x] + list(m.parameters()))
    for a, b, n in [(y, y32, "y"), (h, h32, "h_n"), (c, c32, "c_n")]:
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.05, msg=lambda s: f"{n}: {s}")
    for a, b in zip(g, g32):
        assert a.dtype == b.dtype
        assert _rel_err(a, b) < 0.02, _rel_err(a, b)  # measured 0.010-0.012


def _rel_err(a, b):
    """Relative error in norm: bf16 GEMM inputs (8 bits) move single elements of a gradient
    a lot more than the whole (batch-norm gradients are differences of near-equal terms)."""
    return ((a - b).norm() / b.norm().clamp(min=1e-6)).item()


@pytest.mark.parametrize("backend", AUTOCAST_CPU)
def test_autocast_cell_on_cpu(backend):
    torch.manual_seed(0)
    cell = fusedrnn.LSTMCell(I, H, backend=cell_backend(backend), recurrent_dropout=0.2, variational=True)
    x = torch.randn(4, 3, I)
    hx32 = hx = None
    for t in range(4):
        torch.manual_seed(t)
        hx32 = cell(x[t], hx32)
        torch.manual_seed(t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hx = cell(x[t], hx)
        assert (hx[0].dtype, hx[1].dtype) == (torch.bfloat16, torch.float32)
    torch.testing.assert_close(hx[0].float(), hx32[0], rtol=0.05, atol=0.05)
    torch.testing.assert_close(hx[1], hx32[1], rtol=0.05, atol=0.05)
    hx[1].sum().backward()


def _accumulator(module, device="cpu"):
    """Weights under which c_t = c_{t-1} + 0.002 (f = i = 1, g = 0.002): a 16-bit cell
    state would round every increment away at c = 1 (bf16 spacing there is 2^-7)."""
    with torch.no_grad():
        for n, p in module.named_parameters():
            p.zero_()
        b = module.bias_ih_l0 if hasattr(module, "bias_ih_l0") else module.bias_ih
        b[0:H] = 20.0  # i
        b[H:2 * H] = 20.0  # f
        b[2 * H:3 * H] = math.atanh(0.002)  # g
    return module.to(device)


@pytest.mark.parametrize("backend", AUTOCAST_CPU)
def test_autocast_cell_state_stays_float32(backend):
    T = 100
    m = _accumulator(fusedrnn.LSTM(I, H, backend=backend))
    x = torch.randn(T, 2, I)
    c0 = torch.ones(1, 2, H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, (_, c) = m(x, (torch.zeros(1, 2, H), c0))
    torch.testing.assert_close(c, torch.full_like(c, 1 + T * 0.002), rtol=5e-3, atol=0)
    cell = _accumulator(fusedrnn.LSTMCell(I, H, backend=cell_backend(backend)))
    hx = (torch.zeros(2, H), torch.ones(2, H))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for t in range(T):
            hx = cell(x[t], hx)
    torch.testing.assert_close(hx[1], torch.full_like(hx[1], 1 + T * 0.002), rtol=5e-3, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["auto", "cuda", "triton", "reference"])
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, proj_size=8),
                                dict(recurrent_dropout=0.25, variational=True, batch_norm=True)],
                         ids=["plain", "L2-bd-proj", "v+bn"])
def test_autocast_on_gpu(dtype, backend, kw):
    """fp16 and bf16 autocast on CUDA: y / h_n in the autocast dtype, c_n float32, values
    and gradients near a float32 run, and the float32 cell state (accumulator check)."""
    if fusedrnn.ops.decision.unavailable_reason(backend, torch.device("cuda")) if backend != "auto" else False:
        pytest.skip(f"{backend} unavailable")
    torch.manual_seed(0)
    m = fusedrnn.LSTM(16, 32, backend=backend, device="cuda", **kw)
    x = torch.randn(20, 8, 16, device="cuda", requires_grad=True)
    torch.manual_seed(1)
    y32, (h32, c32) = m(x)
    g32 = torch.autograd.grad(y32.sum() + c32.sum(), [x] + list(m.parameters()))
    torch.manual_seed(1)
    with torch.autocast("cuda", dtype=dtype):
        y, (h, c) = m(x)
    assert (y.dtype, h.dtype, c.dtype) == (dtype, dtype, torch.float32)
    g = torch.autograd.grad(y.float().sum() + c.sum(), [x] + list(m.parameters()))
    tol = dict(rtol=0.05, atol=0.05)
    torch.testing.assert_close(y.float(), y32, **tol)
    torch.testing.assert_close(c, c32, **tol)
    for a, b in zip(g, g32):
        assert _rel_err(a, b) < 0.05
    acc = _accumulator(fusedrnn.LSTM(I, H, backend=backend), "cuda")
    with torch.autocast("cuda", dtype=dtype):
        _, (_, c) = acc(torch.randn(100, 2, I, device="cuda"), (torch.zeros(1, 2, H, device="cuda"),
                                                                torch.ones(1, 2, H, device="cuda")))
    torch.testing.assert_close(c, torch.full_like(c, 1.2), rtol=5e-3, atol=0)
    cell = fusedrnn.LSTMCell(16, 32, backend="auto" if backend in ("triton", "auto") else backend, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        hy, cy = cell(x[0])
    assert (hy.dtype, cy.dtype) == (dtype, torch.float32)
