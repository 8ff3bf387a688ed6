"""The per-step designs' CUDA-graph cache (fusedrnn/backends/step_graphs.py), on the CPU.

The cache's bookkeeping (static inputs, what a replay copies in, fresh outputs, keys,
eviction, failed captures) is checked here with a stand-in graph that has a captured
graph's contract: capture runs the call once on the static inputs and keeps its outputs;
replay recomputes into those same output tensors from whatever the static inputs hold.
The Triton op's forward and backward (through the interpreter, float64) go through it and
must equal direct calls on changing inputs; so must the CUDA backend's graphed kernels (their
Python side, with the CPU op standing in for the C++ CUDA kernels).  tests/test_triton_gpu.py
and tests/test_cuda.py replay real graphs."""

import importlib

import pytest
import torch

from fusedrnn.backends import compiled
from fusedrnn.backends import step_graphs as SG
from fusedrnn.backends.step_graphs import StepGraphs
from fusedrnn.ops import schema
from fusedrnn.ops.contract import Config, Zoneout

try:
    TH = importlib.import_module("fusedrnn.backends.triton.host")
    TOPS = importlib.import_module("fusedrnn.backends.triton.ops")
except ImportError:  # no triton
    TH = TOPS = None
cpu_only = pytest.mark.skipif(TH is None or not TH.INTERPRET,
                              reason="the Triton kernels run on the CPU through the interpreter")
cuda_build = pytest.mark.skipif(not compiled.has_kernel("_cuda_layer_forward_direct", "CUDA"),
                                reason="fusedrnn._C built without CUDA kernels")


class EagerGraph:
    """A captured graph's contract on the CPU: replays write into the capture's outputs."""

    captures = 0

    def capture(self, fn, static_args):
        EagerGraph.captures += 1
        self.fn, self.args = fn, static_args
        self.out = fn(*static_args)
        return self.out

    def replay(self):
        for o, n in zip(self.out, self.fn(*self.args)):
            o.copy_(n)


def _forward_args(seed, zoneout_eval=False, mask=True, T=5, B=3, H=4):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    xp, h0, c0, w_hh = r(T, B, 4 * H), r(B, H), r(B, H), 0.5 * r(4 * H, H)
    m = (torch.rand(B, H, generator=g, dtype=torch.float64) < 0.7).double() / 0.7 if mask else None
    zo = None
    if zoneout_eval:  # the eval rates: expanded views of one value (stride 0), as the module passes them
        zo = Zoneout(torch.tensor(0.3, dtype=torch.float64).expand(T, B, H),
                     torch.tensor(0.2, dtype=torch.float64).expand(T, B, H))
    cfg = Config.of(xp, h0, c0, w_hh, None, m, None, False, None)
    params = schema.layer_params(cfg, w_hh, None, m, None, None, zo)
    return (xp, h0, c0) + tuple(params) + (True,)


def _backward_args(args, out, seed):
    """The backward op's arguments after a forward call (args its arguments, out its outputs):
    random output gradients, the parameter arguments, the saved statistics and workspace."""
    g = torch.Generator().manual_seed(100 + seed)
    y, h_n, c_n, *saved = out
    r = lambda t: torch.randn(t.shape, generator=g, dtype=t.dtype)  # noqa: E731
    return (r(y), r(h_n), r(c_n)) + args[3:-1] + tuple(saved)


@cpu_only
@pytest.mark.parametrize("zoneout_eval", [False, True], ids=["mask", "mask-zoneout-eval"])
def test_forward_and_backward_replays_equal_direct_calls(zoneout_eval):
    graphs = StepGraphs(make_graph=EagerGraph)
    EagerGraph.captures = 0
    held = []
    for seed in range(4):  # call 1 eager, 2 captures, 3 and 4 replay with other values
        args = _forward_args(seed, zoneout_eval)
        with TH.forced_design("step"):
            got = graphs.run(TH._forward, args, "k")
            want = TH._forward(*args)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        held.append((got, want))
        bargs = _backward_args(args, got, seed)
        with TH.forced_design("step"):
            gb = graphs.run(TH._backward, bargs, "k")
            wb = TH._backward(*bargs)
        for a, b in zip(gb, wb):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert EagerGraph.captures == 2 and graphs.replays == 6  # one capture per op; 3 + 3 replays
    for got, want in held:  # results handed out earlier are not overwritten by later replays
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_keys_eviction_and_failed_captures():
    calls = []

    def fn(x, scale):
        calls.append(scale)
        return (x * scale,)

    graphs = StepGraphs(capacity=2, make_graph=EagerGraph)
    x = torch.arange(6.0)
    for shape_case in range(3):  # three shapes, each called twice: captured, then the oldest evicted
        xs = x[: 2 + shape_case]
        graphs.run(fn, (xs, 2.0))
        out = graphs.run(fn, (xs, 2.0))[0]
        torch.testing.assert_close(out, xs * 2.0)
    assert len(graphs.entries) == 2
    assert graphs.run(fn, (x[:2], 3.0))[0].tolist() == [0.0, 3.0]  # a new scalar value is a new key
    # the stride-0 input keeps its strides in the static input and takes new values on replay
    b = torch.tensor(1.5).expand(4)
    graphs.run(fn, (b, 1.0))
    graphs.run(fn, (b, 1.0))
    assert graphs.run(fn, (torch.tensor(2.5).expand(4), 1.0))[0].tolist() == [2.5] * 4

    class Broken(EagerGraph):
        def capture(self, fn, static_args):
            raise RuntimeError("operation not permitted when stream is capturing")

    broken = StepGraphs(make_graph=Broken)
    for _ in range(3):
        assert broken.run(fn, (x, 2.0))[0].tolist() == (x * 2.0).tolist()
    assert len(broken.failed) == 1 and "capturing" in next(iter(broken.failed.values()))
    assert not broken.entries


@cpu_only
def test_off_by_default_and_never_on_cpu_tensors():
    assert SG.ENABLED is False  # opt-in (FUSEDRNN_STEP_GRAPHS=1 / enable())
    args = _forward_args(0)
    before = TH.GRAPHS.replays
    with SG.enabled():
        for _ in range(3):
            TOPS.lstm_layer_forward(*args)
    assert TH.GRAPHS.replays == before and not TH.GRAPHS.seen  # CPU tensors: always the direct call


@cuda_build
def test_cuda_internal_ops_have_the_public_schemas():
    """The C++ kernel calls _graphed with the public op's arguments and the Python kernel
    calls _direct with them: the three schemas must not drift apart."""
    import fusedrnn.backends.cuda  # noqa: F401  (registers the graphed kernels)

    for direction in ("forward", "backward"):
        sig = lambda op: ([(a.name, str(a.type)) for a in op.default._schema.arguments],  # noqa: E731
                          [(a.name, str(a.type)) for a in op.default._schema.returns])
        public = sig(getattr(torch.ops.fusedrnn, f"lstm_layer_{direction}"))
        for route in ("direct", "graphed"):
            name = f"_cuda_layer_{direction}_{route}"
            assert sig(getattr(torch.ops.fusedrnn, name)) == public, name
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedrnn::{name}", "CUDA"), name


@cuda_build
def test_cuda_enable_switches_the_cpp_kernel():
    """enable() reaches the C++ kernel's setting (what sends a per-step call to the cache)."""
    import fusedrnn.backends.cuda  # noqa: F401  (registers the graphed kernels and the switch)

    prev = SG.enable(True)
    try:
        assert compiled._C.set_step_graphs(True) is True
        SG.enable(False)
        assert compiled._C.set_step_graphs(False) is False
        with SG.enabled():
            assert compiled._C.set_step_graphs(True) is True
        assert compiled._C.set_step_graphs(False) is False
    finally:
        SG.enable(prev)


@cuda_build
def test_cuda_graphed_kernels_replay_the_direct_kernels(monkeypatch, cuda_matmul):
    """The Python kernels of fusedrnn::_cuda_layer_*_graphed: four calls with new values (1st
    direct, 2nd captured, 3rd and 4th replayed) equal direct calls, forward and backward; a
    setting the C++ kernels read (TF32) is part of the key; off, every call is direct."""
    CB = importlib.import_module("fusedrnn.backends.cuda")
    direct = {"forward": torch.ops.fusedrnn.lstm_layer_forward.default,  # the CPU kernels stand in
              "backward": torch.ops.fusedrnn.lstm_layer_backward.default}
    graphs = StepGraphs(make_graph=EagerGraph)
    monkeypatch.setattr(CB, "DIRECT", direct)
    monkeypatch.setattr(CB, "GRAPHS", graphs)
    monkeypatch.setattr(SG, "capturable", lambda t: True)
    EagerGraph.captures = 0
    with SG.enabled():
        for seed in range(4):
            args = _forward_args(seed)
            got, want = CB.graphed_forward(*args), direct["forward"](*args)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            bargs = _backward_args(args, want, seed)
            for a, b in zip(CB.graphed_backward(*bargs), direct["backward"](*bargs)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert EagerGraph.captures == 2 and graphs.replays == 6
        cuda_matmul("allow_tf32", not torch.backends.cuda.matmul.allow_tf32)
        CB.graphed_forward(*_forward_args(5))
        assert graphs.replays == 6  # a new key: its first call is direct
    CB.graphed_forward(*_forward_args(6))
    CB.graphed_forward(*_forward_args(6))
    assert graphs.replays == 6  # off


def test_threads_share_a_key_safely():
    """Calls of one key from several threads (nn.DataParallel's pattern) each get their own
    result: the static buffers are used by one call at a time."""
    import threading

    def fn(x):
        return (x * 2.0 + 1.0,)

    graphs = StepGraphs(make_graph=EagerGraph)
    errors = []

    def worker(k):
        for i in range(30):
            x = torch.full((64,), float(k * 100 + i))
            out = graphs.run(fn, (x,))[0]
            if not torch.equal(out, x * 2.0 + 1.0):
                errors.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and graphs.replays >= 100
