"""Smoke test of an installed fusedrnn (a wheel in a fresh venv): run from outside the source
tree, it checks that the installed package, not the checkout, is imported, that the compiled
library loads and serves the native backend, and that a regularized LSTM's forward and
backward on it match the reference backend.  Exit status 0 on success.

    python tests/packaging/smoke.py        (run by tests/packaging/wheel_smoke.sh)
"""

import os
import sys

import torch

import fusedrnn
from fusedrnn.backends import compiled

assert f"{os.sep}site-packages{os.sep}fusedrnn" in os.path.abspath(fusedrnn.__file__), \
    f"not the installed package: {fusedrnn.__file__}"
assert compiled.LOAD_ERROR is None, compiled.LOAD_ERROR
assert "native" in fusedrnn.available_backends("cpu"), fusedrnn.available_backends("cpu")

torch.manual_seed(0)
kw = dict(num_layers=2, bidirectional=True, recurrent_dropout=0.25, variational=True, batch_norm=True)
ref = fusedrnn.LSTM(12, 16, backend="reference", **kw).double()
nat = fusedrnn.LSTM(12, 16, backend="native", **kw).double()
nat.load_state_dict(ref.state_dict())
x = torch.randn(9, 4, 12, dtype=torch.float64, requires_grad=True)
outs = []
for m in (ref, nat):
    torch.manual_seed(1)  # the same masks
    y, (h, c) = m(x)
    g = torch.autograd.grad(y.square().sum() + h.sum() + c.sum(), [x] + list(m.parameters()))
    outs.append([y, h, c, *g])
for a, b in zip(*outs):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
print(f"fusedrnn {fusedrnn.__version__} from {os.path.dirname(fusedrnn.__file__)}: native matches the reference "
      f"(torch {torch.__version__}, CUDA targets: {getattr(compiled._C, 'CUDA_TARGETS', '') or 'none'})")
sys.exit(0)
