"""fusedrnn.LSTMCell is nn.LSTMCell (every backend), plus its regularizers: the held
variational mask, explicit masks, and batch norm stepping like the layer."""

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import ops
from helpers import TRITON, assert_close, grads

B, I, H = 4, 3, 5
# triton has no cell kernel (a single step runs on native / reference): it is not in these
# lists; its layer kernel serves a batch-norm cell (test_batch_norm_cell_steps_like_the_layer).
CPU_BACKENDS = fusedrnn.available_backends("cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["auto"])  # auto: torch's own cell for a plain step
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_nn_lstmcell(backend, batched, with_hx, bias):
    torch.manual_seed(3)
    ref = nn.LSTMCell(I, H, bias=bias, dtype=torch.float64)
    torch.manual_seed(3)
    cell = fusedrnn.LSTMCell(I, H, bias=bias, dtype=torch.float64, backend=backend)
    assert isinstance(cell, nn.LSTMCell)
    for (n, p), (_, q) in zip(ref.named_parameters(), cell.named_parameters()):
        assert torch.equal(p, q), n
    shape = (B,) if batched else ()
    x = torch.randn(*shape, I, dtype=torch.float64, requires_grad=True)
    hx = None
    if with_hx:
        hx = (torch.randn(*shape, H, dtype=torch.float64, requires_grad=True),
              torch.randn(*shape, H, dtype=torch.float64, requires_grad=True))
    hr, cr = ref(x, hx)
    hf, cf = cell(x, hx)
    assert_close(hf, hr, msg="h")
    assert_close(cf, cr, msg="c")
    wrt = [x] + (list(hx) if hx else [])
    loss = lambda h, c: (h * torch.linspace(-1, 1, H, dtype=h.dtype)).sum() + (c ** 2).sum()  # noqa: E731
    g_r = grads(loss(hr, cr), wrt + list(ref.parameters()))
    g_f = grads(loss(hf, cf), wrt + list(cell.parameters()))
    for a, b in zip(g_f, g_r):
        assert_close(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_close_to_float64(backend, dtype):
    torch.manual_seed(0)
    ref = nn.LSTMCell(I, H, dtype=torch.float64)
    cell = fusedrnn.LSTMCell(I, H, dtype=dtype, backend=backend)
    cell.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    torch_lp = nn.LSTMCell(I, H, dtype=dtype)
    torch_lp.load_state_dict(cell.state_dict())
    x = torch.randn(B, I, dtype=torch.float64)
    hx = (torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64))
    exact = ref(x, hx)
    ours = cell(x.to(dtype), tuple(t.to(dtype) for t in hx))
    theirs = torch_lp(x.to(dtype), tuple(t.to(dtype) for t in hx))
    for o, t, e in zip(ours, theirs, exact):
        assert o.dtype == dtype
        err_o = (o.double() - e).abs().max().item()
        err_t = (t.double() - e).abs().max().item()
        assert err_o <= 2 * err_t + 1e-6, (err_o, err_t)


def test_variational_mask_held_until_reset():
    torch.manual_seed(0)
    cell = fusedrnn.LSTMCell(I, H, recurrent_dropout=0.5, variational=True, backend="native")
    x, h = torch.randn(B, I), (torch.randn(B, H), torch.randn(B, H))
    seen = []
    real = ops.lstm_cell

    def spy(*a, **k):
        seen.append(k["mask"])
        return real(*a, **k)

    import fusedrnn.modules.cell as cell_mod
    orig = cell_mod.ops.lstm_cell
    cell_mod.ops.lstm_cell = spy
    try:
        for _ in range(3):
            h = cell(x, h)
        cell.reset()
        cell(x, h)
        explicit = cell.sample_mask(B)
        cell(x, h, mask=explicit)
        cell.variational = False
        cell(x, h)
        cell(x, h)
        cell.eval()
        cell(x, h)
    finally:
        cell_mod.ops.lstm_cell = orig
    assert seen[0] is seen[1] is seen[2]
    assert not torch.equal(seen[0], seen[3])
    assert seen[4] is explicit
    assert not torch.equal(seen[5], seen[6])
    assert seen[7] is None


@pytest.mark.parametrize("backend", CPU_BACKENDS + (["triton"] if TRITON else []))
def test_batch_norm_cell_steps_like_the_layer(backend):
    torch.manual_seed(0)
    T, S = 5, 3
    lstm = fusedrnn.LSTM(I, H, batch_norm=True, bn_max_steps=S, dtype=torch.float64, backend="reference")
    cell = fusedrnn.LSTMCell(I, H, batch_norm=True, bn_max_steps=S, dtype=torch.float64, backend=backend)
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in lstm.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64)
    for training in (True, False):
        lstm.train(training)
        cell.train(training)
        cell.reset()
        y, _ = lstm(x)
        h = None
        for t in range(T):
            h = cell(x[t], h)
            assert_close(h[0], y[t], msg=f"step {t} training={training}")
        for k, v in lstm.state_dict().items():
            assert_close(cell.state_dict()[k.replace("_l0", "")], v, msg=k)
    # an explicit step index selects the slot without advancing the counter
    cell.eval()
    cell.reset()
    a = cell(x[0], step=4)
    assert cell._step == 0
    b = cell(x[0], step=2)  # slots >= S - 1 are the same slot
    assert_close(a[0], b[0])
