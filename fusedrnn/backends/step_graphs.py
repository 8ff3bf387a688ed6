"""CUDA graphs of the per-step designs' host loops, keyed by everything the launches depend on.

A per-step design launches one to three kernels per time step from the host; at small
batches and hidden sizes that launch rate, not the GPU, bounds the step time.  A
:class:`StepGraphs` cache captures one whole op call (all T steps) in a CUDA graph the first
time a key repeats, and afterwards replays it: the call's tensor arguments are copied into
the graph's static inputs, the graph is replayed on the current stream, and its outputs are
returned as fresh tensors (clones: the next replay overwrites the static ones).

The key is the function, every tensor argument's shape / stride / dtype / device (or None),
every other argument's value, and what the caller adds (the plan, TF32).  A key is captured
on its second call (the first runs eagerly: it compiles and autotunes); a capture that fails
is remembered and that key runs eagerly from then on.  Entries beyond ``capacity`` are
evicted, least recently used first, releasing their memory pools.  Calls are serialised (a
lock; the static buffers are shared), and a replay waits for the previous replay's output
clones, which may have been issued on another stream (an event).

Opt-in (like torch.compile's "reduce-overhead" mode): the static buffers and the output
clones cost memory and a copy of every input and output per call.  Not for calls inside a
callable compiled with mode="reduce-overhead": that mode graphs the whole callable already
(while it records, a call here runs directly; while it warms up, a capture here would take
its memory from that mode's pool).  FUSEDRNN_STEP_GRAPHS=1
(read at import), :func:`enable` or the :func:`enabled` context turn it on for the per-step
designs of both GPU backends: the Triton host's calls (fusedrnn/backends/triton/host.py) and
the CUDA layer op's (its C++ kernel sends a per-step call to fusedrnn::_cuda_layer_*_graphed,
whose Python kernel is in fusedrnn/backends/cuda.py).  Each backend has its own cache
(:func:`cache`).

Dimension letters: T steps (part of the key: a new length captures a new graph).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from typing import Callable, Hashable, Iterator, Optional

import torch
from torch import Tensor


def tensor_key(a) -> Hashable:
    """What a launch sequence depends on in one argument: a tensor's geometry (not its
    values, not its address: replays copy the values into the static input), else the
    value itself."""
    if isinstance(a, Tensor):
        return ("T", tuple(a.shape), tuple(a.stride()), a.dtype, str(a.device))
    return ("V", a)


class CudaGraph:
    """A captured call on CUDA: capture(fn, static_args) runs fn once on a side stream (the
    warm-up torch recommends), then captures it on a stream of the arguments' device (not
    torch.cuda.graph's default capture stream, which belongs to the device of the process's
    first capture: the kernels' device guard would leave it and run them uncaptured);
    replay() re-issues the captured work."""

    def __init__(self):
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable, static_args: list) -> tuple:
        devices = {a.device for a in static_args if isinstance(a, Tensor) and a.is_cuda}
        if len(devices) != 1:
            raise ValueError(f"a call on one CUDA device is captured, got {sorted(map(str, devices))}")
        with torch.cuda.device(devices.pop()):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn(*static_args)
            torch.cuda.current_stream().wait_stream(side)
            # thread-local: another thread's allocations during the capture are not an error
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
                out = fn(*static_args)
        return out

    def replay(self) -> None:
        self.graph.replay()


def _compact(a: Tensor) -> Tensor:
    """The distinct elements of a: a broadcast (stride-0) dimension reduced to its one element
    (the eval zoneout rates are expanded views of one value each)."""
    return a[tuple(slice(0, 1) if st == 0 and n > 1 else slice(None) for n, st in zip(a.shape, a.stride()))]


def _static_like(a: Tensor) -> tuple[Tensor, Tensor]:
    """(the static input, what a replay copies into): a tensor of a's shape and strides (the
    host code branches on them, e.g. stride 0), backed by its own memory."""
    c = _compact(a)
    if torch._debug_has_internal_overlap(c) == 1:  # (2: not known, e.g. a column slice; it has none)
        raise ValueError("an argument with overlapping memory (other than broadcast dimensions)")
    store = torch.empty_strided(c.shape, c.stride(), dtype=c.dtype, device=c.device).copy_(c)
    return store.expand(a.shape) if store.shape != a.shape else store, store


class _Entry:
    __slots__ = ("graph", "static_args", "stores", "static_out", "done")

    def __init__(self, graph, static_args, stores, static_out):
        self.graph, self.static_args, self.stores, self.static_out = graph, static_args, stores, static_out
        self.done = None  # CUDA: an event after the last replay's clones, on the stream that issued them


class StepGraphs:
    """The cache of captured calls (see the module docstring).  make_graph builds the graph
    object (CudaGraph; tests substitute one with the same contract)."""

    def __init__(self, capacity: int = 4, make_graph: Callable[[], object] = CudaGraph):
        self.capacity = capacity
        self.make_graph = make_graph
        self.entries: "collections.OrderedDict[Hashable, _Entry]" = collections.OrderedDict()
        self.seen: set = set()
        self.failed: dict = {}  # key -> why the capture failed
        self.replays = 0
        self.lock = threading.Lock()  # one call at a time (threads share the static buffers)

    def clear(self) -> None:
        self.entries.clear()
        self.seen.clear()
        self.failed.clear()

    def run(self, fn: Callable, args: tuple, extra_key: Hashable = ()) -> tuple:
        """fn(*args) (a tuple of tensors), through the graph of its key once the key repeats."""
        key = (getattr(fn, "__qualname__", repr(fn)), extra_key, tuple(tensor_key(a) for a in args))
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                if key in self.failed or key not in self.seen:
                    if len(self.seen) > 4096:
                        self.seen.clear()
                    self.seen.add(key)
                else:
                    entry = self._capture(key, fn, args)
            if entry is not None:
                self.entries.move_to_end(key)
                cuda = any(isinstance(a, Tensor) and a.is_cuda for a in args)
                if cuda and entry.done is not None:  # the last replay's clones, maybe on another stream
                    torch.cuda.current_stream().wait_event(entry.done)
                for store, a in zip(entry.stores, args):
                    if store is not None:
                        store.copy_(_compact(a))
                entry.graph.replay()
                self.replays += 1
                out = tuple(o.clone() if isinstance(o, Tensor) else o for o in entry.static_out)
                if cuda:
                    entry.done = torch.cuda.Event()
                    entry.done.record()
                return out
        return fn(*args)  # first call (compiles, autotunes) or a key that cannot be captured

    def _capture(self, key, fn: Callable, args: tuple) -> Optional[_Entry]:
        try:
            pairs = [_static_like(a) if isinstance(a, Tensor) else (a, None) for a in args]
            static_args = [p[0] for p in pairs]
            graph = self.make_graph()
            out = graph.capture(fn, static_args)
        except Exception as e:  # noqa: BLE001 - this key runs eagerly from now on, with the reason kept
            self.failed[key] = f"{type(e).__name__}: {e}"
            return None
        entry = _Entry(graph, static_args, [p[1] for p in pairs], tuple(out))
        self.entries[key] = entry
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return entry


def eager_cuda(t: Tensor) -> bool:
    """A real CUDA tensor in eager mode: not a FakeTensor or a subclass, not while torch.compile
    / export traces (what launch-time choices such as autotuning, cooperative launches and
    graphs need)."""
    return type(t) is torch.Tensor and t.is_cuda and not torch.compiler.is_compiling()


def capturable(t: Tensor) -> bool:
    """Whether a call on t may go through a graph: :func:`eager_cuda`, and no capture already
    under way on the current stream."""
    return eager_cuda(t) and not torch.cuda.is_current_stream_capturing()


# ---- the setting, and each backend's cache -------------------------------------------------

ENABLED = os.environ.get("FUSEDRNN_STEP_GRAPHS", "0").strip() == "1"
_CACHES: "dict[str, tuple[StepGraphs, Optional[Callable[[bool], object]]]]" = {}


def cache(name: str, on_switch: Optional[Callable[[bool], object]] = None) -> StepGraphs:
    """The cache of backend ``name`` (created on first use).  on_switch(on) is told the
    setting now and at every :func:`enable` (the CUDA backend forwards it to its C++ op)."""
    if name not in _CACHES:
        _CACHES[name] = (StepGraphs(), on_switch)
        if on_switch is not None:
            on_switch(ENABLED)
    return _CACHES[name][0]


def enable(on: bool = True) -> bool:
    """Turn step graphs on or off for every backend; returns the previous setting.  Off keeps
    the captured graphs (turned on again, they replay); :func:`clear` releases them."""
    global ENABLED
    prev, ENABLED = ENABLED, bool(on)
    for _, on_switch in _CACHES.values():
        if on_switch is not None:
            on_switch(ENABLED)
    return prev


def clear() -> None:
    """Release every backend's captured graphs and static buffers."""
    for graphs, _ in _CACHES.values():
        graphs.clear()


@contextlib.contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """``with enabled(): ...`` step graphs on (or off) inside the block, the setting restored after."""
    prev = enable(on)
    try:
        yield
    finally:
        enable(prev)


__all__ = ["ENABLED", "CudaGraph", "StepGraphs", "cache", "capturable", "clear", "eager_cuda", "enable", "enabled",
           "tensor_key"]
