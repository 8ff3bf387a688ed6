"""Shared test helpers: input builders and comparisons."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

# the CPU backends every CPU test runs: native and reference, and triton where its kernels run
# on CPU tensors (the interpreter, which conftest.py turns on)
TRITON = fusedrnn.ops.decision.unavailable_reason("triton", torch.device("cpu")) is None
CPU_BACKENDS = fusedrnn.available_backends("cpu") + (["triton"] if TRITON else [])


def cell_backend(backend: str) -> str:
    """Triton has no cell kernel (an unregularized step runs elsewhere): cells use native."""
    return "native" if backend == "triton" else backend

def native_against_reference(cls, options: dict, dtype, I: int, H: int) -> list:
    """A two-layer bidirectional ``cls`` (fusedrnn.LSTM or GRU) with ``options`` on the reference
    backend in float64 and on the native backend in ``dtype`` (the same weights, masks and
    input with lengths): [reference results, native results], each the output, the final
    states and the gradients of the input and every parameter, in float64."""
    torch.manual_seed(0)
    ref = cls(I, H, num_layers=2, bidirectional=True, backend="reference", dtype=torch.float64, **options)
    m = cls(I, H, num_layers=2, bidirectional=True, backend="native", dtype=dtype, **options)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(6, 16, I, dtype=torch.float64)
    lengths = torch.tensor([6, 5, 6, 2, 6, 1, 4, 6, 3, 6, 6, 5, 0, 6, 2, 6])
    out = []
    for mod, dt in ((ref, torch.float64), (m, dtype)):
        xx = x.to(dt).requires_grad_()
        torch.manual_seed(1)
        y, state = mod(xx, lengths=lengths)
        states = state if isinstance(state, tuple) else (state,)
        loss = (y.double() * y.double().cos()).sum() + sum(s.double().sum() for s in states)
        gs = torch.autograd.grad(loss, [xx] + list(mod.parameters()))
        out.append([t.double() for t in (y, *states, *gs)])
    return out


TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
}


def assert_close(actual, expected, dtype=torch.float64, msg="", **kw):
    tol = dict(TOL.get(dtype, dict(rtol=2e-2, atol=2e-2)))
    tol.update(kw)
    assert not torch.isnan(actual).any() or torch.isnan(expected).any(), f"{msg}: NaN in result"
    torch.testing.assert_close(actual, expected, msg=lambda m: f"{msg}: {m}", **tol)


def make_input(kind, T, B, I, batch_first, dtype, lengths=None, seed=0):
    """An LSTM input of the given kind and the leaf tensor to take gradients of.

    kind: "batched", "unbatched", "packed" (sorted) or "packed_unsorted".
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "unbatched":
        x = torch.randn(T, I, generator=g, dtype=dtype, requires_grad=True)
        return x, x
    x = torch.randn(T, B, I, generator=g, dtype=dtype, requires_grad=True)
    if kind == "batched":
        return (x.transpose(0, 1) if batch_first else x), x
    if lengths is None:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[torch.randint(0, B, (1,), generator=g)] = T
    if kind == "packed":
        lengths = lengths.sort(descending=True).values
    packed = pack_padded_sequence(x, lengths, enforce_sorted=(kind == "packed"))
    return packed, x


def output_tensor(out):
    return out.data if hasattr(out, "batch_sizes") else out


def grads(loss, tensors):
    gs = torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, tensors)]


def random_loss(out, h_n, c_n, seed=1):
    """A loss that weighs every output element and the final state differently."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for t in (output_tensor(out), h_n, c_n):
        w = torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)
        total = total + (t * w).sum()
    return total


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(script: str, *args: str, timeout: float = 300, **env: str) -> str:
    """Run ``python -c script args`` in a fresh process at the repository root (outputs not
    NaN-poisoned there; ``env`` adds variables) and return its stdout; fails the test with the
    process's stderr if it exits non-zero."""
    r = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, FUSEDRNN_POISON_OUTPUTS="0", **env))
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def run_python_json(script: str, *args: str, **kw) -> dict:
    """:func:`run_python`, then the JSON object on the last line of its stdout."""
    return json.loads(run_python(script, *args, **kw).strip().splitlines()[-1])
