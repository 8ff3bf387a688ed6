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
