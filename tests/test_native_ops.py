"""The compiled fusedrnn:: ops: opcheck on every sample, gradcheck in float64, and the
poisoned-output check of the native kernels."""

import pytest
import torch

from fusedrnn.backends import native

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason="fusedrnn._C not built")


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
