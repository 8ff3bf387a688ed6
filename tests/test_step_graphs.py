"""The per-step designs' CUDA-graph cache (fusedrnn/backends/step_graphs.py), on the CPU.

The cache's bookkeeping (static inputs, what a replay copies in, fresh outputs, keys,
eviction, failed captures) is checked here with a stand-in graph that has a captured
graph's contract: capture runs the call once on the static inputs and keeps its outputs;
replay recomputes into those same output tensors from whatever the static inputs hold.
The Triton op's forward and backward (through the interpreter, float64) go through it and
must equal direct calls on changing inputs.  tests/test_triton_gpu.py replays real graphs."""

import importlib

import pytest
import torch

pytest.importorskip("triton")

from fusedrnn.backends.step_graphs import StepGraphs  # noqa: E402
from fusedrnn.ops import schema  # noqa: E402
from fusedrnn.ops.contract import Config, Zoneout  # noqa: E402

TH = importlib.import_module("fusedrnn.backends.triton.host")
TOPS = importlib.import_module("fusedrnn.backends.triton.ops")
cpu_only = pytest.mark.skipif(not TH.INTERPRET, reason="the Triton kernels run on the CPU through the interpreter")


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
        y, h_n, c_n, h_stats, c_stats, ws_h, ws_act, ws_c, ws_hh_hat, ws_hc = got
        dy = torch.randn_like(y)
        bargs = (dy, torch.randn_like(h_n), torch.randn_like(c_n)) + args[3:-1] + (h_stats, c_stats, ws_h, ws_act,
                                                                                    ws_c, ws_hh_hat, ws_hc)
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
def test_off_by_default_and_never_on_cpu_tensors(monkeypatch):
    assert TH.STEP_GRAPHS is False  # opt-in (FUSEDRNN_STEP_GRAPHS=1 / step_graphs())
    monkeypatch.setattr(TH, "STEP_GRAPHS", True)
    args = _forward_args(0)
    before = TH.GRAPHS.replays
    for _ in range(3):
        TOPS.lstm_layer_forward(*args)
    assert TH.GRAPHS.replays == before and not TH.GRAPHS.seen  # CPU tensors: always the direct call


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
