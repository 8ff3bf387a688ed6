"""torch.compile and torch.library.opcheck.

- torch.compile(fullgraph=True) over fusedrnn.LSTM and fusedrnn.LSTMCell on every CPU
  backend (triton through the interpreter: an opaque custom op there), plain and with every
  regularizer: no graph break (fullgraph raises on one), forward and gradients equal to
  eager.  aot_eager everywhere except one inductor test (inductor compiles with gcc here,
  many seconds per graph).
- The backend decision is taken at trace time and does not specialise the sequence length:
  new lengths do not recompile after the first dynamic recompile.
- opcheck on every registered op not already covered by tests/test_native_ops.py: the
  backward of the fused BN_x op, the Triton ops (interpreter), and on a GPU every CUDA op.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fusedrnn
from fusedrnn.backends import compiled
from fusedrnn.core import schema
from fusedrnn.core.trace import trace_constant

BACKENDS = list(fusedrnn.available_backends("cpu"))
if fusedrnn.ops.decision.unavailable_reason("triton", torch.device("cpu")) is None:
    BACKENDS.append("triton")
REG = dict(num_layers=2, bidirectional=True, proj_size=2, dropout=0.3, recurrent_dropout=0.25,
           variational=True, batch_norm=True, bn_max_steps=3)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _lstm_run(mod, x, seed=1):
    torch.manual_seed(seed)  # the same dropout draws in eager and compiled (aot_eager runs the same ops)
    y, (h, c) = mod(x)
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    loss = (y * w).sum() + h.pow(2).sum() + c.sum()
    return [y, h, c, *torch.autograd.grad(loss, [x] + list(mod.parameters()))]


# The reference backend (the oracle, a Python loop) compiles plain only: its regularized graph took
# 12 s of make test and is no user's path (the default construction is; "auto" covers it).
@pytest.mark.parametrize("backend,kw", [(b, kw) for kw in (dict(), REG) for b in BACKENDS + ["auto"]
                                        if not (b == "reference" and kw)],
                         ids=[f"{'regularized' if kw else 'plain'}-{b}" for kw in (dict(), REG)
                              for b in BACKENDS + ["auto"] if not (b == "reference" and kw)])
def test_compile_lstm_fullgraph_matches_eager(backend, kw):
    torch.manual_seed(0)
    mod = fusedrnn.LSTM(3, 4, dtype=torch.float64, backend=backend, batch_first=True, **kw)
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    for training in (True, False):
        mod.train(training)
        state = {k: v.clone() for k, v in mod.state_dict().items()}
        got = _lstm_run(compiled, x)
        after = {k: v.clone() for k, v in mod.state_dict().items()}
        mod.load_state_dict(state)  # running statistics as before the compiled step
        want = _lstm_run(mod, x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        for k, v in mod.state_dict().items():  # the compiled step updated the buffers the same way
            torch.testing.assert_close(after[k], v, rtol=1e-12, atol=1e-12, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"] + ["auto"])
@pytest.mark.parametrize("kw", [dict(), dict(recurrent_dropout=0.3, variational=True, batch_norm=True)],
                         ids=["plain", "regularized"])
def test_compile_cell_decoder_fullgraph_matches_eager(backend, kw):
    """A decoder loop over a cell compiled whole (the batch-norm step counter and the held
    variational mask are module state the graph updates); called twice, it reuses the graph."""
    torch.manual_seed(0)
    cell = fusedrnn.LSTMCell(3, 4, dtype=torch.float64, backend=backend, **kw)
    xs = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def decode(xs):
        cell.reset()
        hx, outs = None, []
        for t in range(xs.shape[0]):
            hx = cell(xs[t], hx)
            outs.append(hx[0])
        return torch.stack(outs), hx[1]

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(decode, fullgraph=True, backend=counter)
    for _ in range(2):
        res = []
        for f in (compiled, decode):
            torch.manual_seed(1)
            y, c = f(xs)
            res.append([y, c, *torch.autograd.grad((y * y).sum() + c.sum(), [xs] + list(cell.parameters()))])
        for a, b in zip(*res):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert counter.frame_count == 1


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_sequence_length_does_not_recompile(backend):
    if backend not in BACKENDS:
        pytest.skip(f"{backend} not available")
    mod = fusedrnn.LSTM(3, 4, backend=backend, recurrent_dropout=0.2, batch_norm=True)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(mod, fullgraph=True, backend=counter)
    for T in (5, 6, 7, 9):
        y, _ = compiled(torch.randn(T, 2, 3))
        assert y.shape == (T, 2, 4)
    assert counter.frame_count <= 2  # static, then one dynamic graph for every length


def test_inductor_fullgraph_native():
    """One inductor graph (forward + backward; C++ codegen) for the native kernels with
    every regularizer, training; fallback_random makes inductor draw masks as eager does."""
    if "native" not in BACKENDS:
        pytest.skip("no native backend")
    from torch._inductor import config as inductor_config

    torch.manual_seed(0)
    mod = fusedrnn.LSTM(3, 4, num_layers=2, dropout=0.2, recurrent_dropout=0.25, variational=True,
                        batch_norm=True, backend="native")
    x = torch.randn(5, 3, 3, requires_grad=True)
    with inductor_config.patch(fallback_random=True):
        compiled = torch.compile(mod, fullgraph=True)
        got = _lstm_run(compiled, x)
    want = _lstm_run(mod, x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---- opcheck ------------------------------------------------------------------------------------


@pytest.mark.skipif(compiled.LOAD_ERROR is not None, reason="fusedrnn._C not built")
@pytest.mark.parametrize("training", [True, False])
def test_opcheck_batch_norm_steps_backward(training):
    g = torch.Generator().manual_seed(0)
    T, B, F = 4, 3, 5
    v = torch.randn(T, B, F, generator=g, dtype=torch.float64)
    w = torch.rand(F, generator=g, dtype=torch.float64) + 0.5
    lengths = torch.tensor([4, 2, 3])
    if training:
        _, mean, var = torch.ops.fusedrnn.batch_norm_steps_forward(v, w, None, lengths, True, None, None, True, 1e-5)
    else:
        mean, var = torch.randn(T, F, generator=g, dtype=torch.float64), torch.rand(T, F, generator=g, dtype=torch.float64) + 0.5
    args = (torch.randn(T, B, F, generator=g, dtype=torch.float64), v, w, lengths, True, mean, var, training, 1e-5)
    torch.library.opcheck(torch.ops.fusedrnn.batch_norm_steps_backward.default, args)


def _triton_args(case, device="cpu", dtype=torch.float64):
    """The schema's forward args of a test_triton case (fusedrnn.ops.schema.layer_params)."""
    from test_triton import make_case

    from fusedrnn.core.contract import Config

    args, _ = make_case(*case, device=device, dtype=dtype)
    xp, h0, c0, w_hh, w_hr, m, lens, rev, bn = args
    cfg = Config.of(xp, h0, c0, w_hh, w_hr, m, lens, rev, bn)
    return (xp, h0, c0, *schema.layer_params(cfg, w_hh, w_hr, m, lens, bn), True)


TRITON_CASES = [(None, None, 0, False, False), ("per_step", "train", 3, True, True), ("shared", "eval", 3, True, False)]


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton interpreter not available")
@pytest.mark.parametrize("case", TRITON_CASES, ids=["plain", "train-all", "eval-all"])
def test_opcheck_triton_ops(case):
    fwd, bwd = torch.ops.fusedrnn_triton.lstm_layer_forward, torch.ops.fusedrnn_triton.lstm_layer_backward
    args = _triton_args(case)
    torch.library.opcheck(fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    with torch.no_grad():
        out = fwd(*args)
    bargs = (torch.randn_like(out[0]), torch.randn_like(out[1]), torch.randn_like(out[2]),
             *args[3:3 + len(schema.PARAMS)], *out[3:])
    bargs = tuple(a.detach() if torch.is_tensor(a) else a for a in bargs)
    torch.library.opcheck(bwd.default, bargs,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_op_families_share_one_schema():
    """fusedrnn:: and fusedrnn_triton:: layer ops: the same argument names, order and types."""
    if "triton" not in BACKENDS or compiled.LOAD_ERROR is not None:
        pytest.skip("needs both op families")
    for name in ("lstm_layer_forward", "lstm_layer_backward"):
        a = getattr(torch.ops.fusedrnn, name).default._schema
        b = getattr(torch.ops.fusedrnn_triton, name).default._schema
        sig = lambda s: [(x.name, str(x.type)) for x in s.arguments]  # noqa: E731
        assert sig(a) == sig(b), name
        assert [x.name for x in a.arguments][3:3 + len(schema.PARAMS)] == list(schema.PARAMS)


@pytest.mark.gpu
def test_opcheck_cuda_ops():
    """Every fusedrnn:: op on its CUDA kernel (run on a GPU by benchmarks/gpu_check.sh)."""
    from test_native_ops import LAYER_CASES, _layer_args

    dev = "cuda"
    for dtype in (torch.float32, torch.float16):
        gates = torch.randn(3, 20, device=dev, dtype=dtype)
        cx = torch.randn(3, 5, device=dev, dtype=dtype)
        torch.library.opcheck(torch.ops.fusedrnn.lstm_cell_forward.default, (gates, cx))
        hy, cy, act = torch.ops.fusedrnn.lstm_cell_forward(gates, cx)
        torch.library.opcheck(torch.ops.fusedrnn.lstm_cell_backward.default,
                              (torch.randn_like(hy), torch.randn_like(cy), act, cx, cy))
    for case in LAYER_CASES:
        args, _ = _layer_args(case, dtype=torch.float32)
        args = tuple(a.to(dev) if torch.is_tensor(a) else a for a in args)
        args = tuple(a.detach().requires_grad_(a.requires_grad) if torch.is_tensor(a) and a.is_floating_point()
                     else a for a in args)
        torch.library.opcheck(torch.ops.fusedrnn.lstm_layer_forward.default, args)
        with torch.no_grad():
            out = torch.ops.fusedrnn.lstm_layer_forward(*args)
        bargs = (torch.randn_like(out[0]), torch.randn_like(out[1]), torch.randn_like(out[2]),
                 *args[3:3 + len(schema.PARAMS)], *out[3:])
        bargs = tuple(a.detach() if torch.is_tensor(a) else a for a in bargs)
        torch.library.opcheck(torch.ops.fusedrnn.lstm_layer_backward.default, bargs)
    v = torch.randn(4, 3, 5, device=dev, requires_grad=True)
    w = torch.rand(5, device=dev, requires_grad=True)
    lengths = torch.tensor([4, 2, 3], device=dev)
    torch.library.opcheck(torch.ops.fusedrnn.batch_norm_steps_forward.default,
                          (v, w, None, lengths, True, None, None, True, 1e-5))
    _, mean, var = torch.ops.fusedrnn.batch_norm_steps_forward(v.detach(), w.detach(), None, lengths, True, None,
                                                               None, True, 1e-5)
    torch.library.opcheck(torch.ops.fusedrnn.batch_norm_steps_backward.default,
                          (torch.randn_like(v), v.detach(), w.detach(), lengths, True, mean, var, True, 1e-5))


@pytest.mark.gpu
@pytest.mark.inductor
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_compile_fullgraph_on_gpu(backend):
    """fullgraph compile of a regularized module on the GPU backends (inductor)."""
    torch.manual_seed(0)
    mod = fusedrnn.LSTM(16, 32, num_layers=2, recurrent_dropout=0.2, batch_norm=True, backend=backend,
                        device="cuda").eval()
    x = torch.randn(10, 8, 16, device="cuda", requires_grad=True)
    compiled = torch.compile(mod, fullgraph=True)
    got, want = _lstm_run(compiled, x), _lstm_run(mod, x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


# ---- import cost --------------------------------------------------------------------------------

_IMPORT = r"""
import json, sys, torch, fusedrnn
m = fusedrnn.LSTM(4, 4, recurrent_dropout=0.2, batch_norm=True, bn_max_steps=3)
y, _ = m(torch.randn(3, 2, 4)); y.sum().backward()
fusedrnn.LSTMCell(4, 4)(torch.randn(2, 4))
print(json.dumps(sorted(k for k in ("torch._dynamo", "sympy", "triton") if k in sys.modules)))
"""


def test_import_and_eager_use_leave_dynamo_unloaded():
    """``import fusedrnn`` and eager use import neither Dynamo nor Triton (a fresh process):
    Dynamo alone cost 1.3 s of the import. The decisions are still trace-time constants:
    trace_constant sets what torch.compiler.assume_constant_result sets, and nothing else."""
    from helpers import run_python

    assert json.loads(run_python(_IMPORT).strip().splitlines()[-1]) == []

    def f():
        pass

    def g():
        pass

    before = set(vars(f))
    torch.compiler.assume_constant_result(f)
    assert {k: v for k, v in vars(f).items() if k not in before} == vars(trace_constant(g))
