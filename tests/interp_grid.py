"""Persistent Triton launches with many programs under the interpreter (tests only).

The interpreter runs the programs of a grid one after another, so a persistent kernel,
whose programs wait for each other at a grid barrier once per step, can only run there
as a single program (fusedrnn/backends/triton/config.py tiles it so), and its multi-block
logic (which rows and columns a program owns, the exchange of h through global memory,
the barriers) would go untested on the CPU.

:func:`threaded_programs` runs every program of a launch in its own thread instead: the
interpreter's grid index becomes per-thread, the barrier's atomics are single calls into
the interpreter's C++ helpers (atomic under the GIL), and its spin loop yields to the other
threads.  :func:`gpu_sized_tilings` makes the tiling heuristic see a GPU (132
multiprocessors, the GPU heuristic), so the launches get the grids a GPU gets.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading
import time

import pytest


@contextlib.contextmanager
def threaded_programs():
    interp = pytest.importorskip("triton.runtime.interpreter")
    builder = interp.interpreter_builder
    if not hasattr(interp.InterpretedFunction, "run") or not hasattr(builder, "set_grid_idx"):
        pytest.skip("this triton's interpreter has no grid executor to thread")
    local = threading.local()
    main = {"idx": None}
    base = type(builder)
    abort = threading.Event()
    rewrite_lock = threading.Lock()

    class PerThreadGrid(base):
        @property
        def grid_idx(self):
            return getattr(local, "idx", main["idx"])

        @grid_idx.setter
        def grid_idx(self, value):
            if threading.current_thread() is threading.main_thread():
                main["idx"] = value
            else:
                local.idx = value

        def create_load(self, *args, **kwargs):  # every spin of a barrier loads its counter
            if abort.is_set() and threading.current_thread() is not threading.main_thread():
                raise RuntimeError("stopped: another program of this launch failed")
            return super().create_load(*args, **kwargs)

    class Concurrent:
        """Stands for the kernel in the interpreter's grid loop: collects the grid points,
        then runs them all at once, one thread each."""

        def __init__(self, fn):
            self._fn = fn
            self._todo = []
            self.__signature__ = inspect.signature(fn)

        def __getattr__(self, name):
            return getattr(self._fn, name)

        def __call__(self, *args, **kwargs):
            self._todo.append(builder.grid_idx)
            nx, ny, nz = builder.grid_dim
            if len(self._todo) < nx * ny * nz:
                return
            todo, self._todo, errors = self._todo, [], []

            def program(idx):
                local.idx = idx
                try:
                    self._fn(*args, **kwargs)
                except BaseException as e:  # re-raised in the launching thread
                    errors.append(e)

            threads = [threading.Thread(target=program, args=(idx,), daemon=True) for idx in todo]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 600
            while any(t.is_alive() for t in threads) and not errors and time.monotonic() < deadline:
                for t in threads:
                    t.join(timeout=0.05)
            stuck = any(t.is_alive() for t in threads)
            if stuck or errors:  # stop the programs still spinning at a barrier
                abort.set()
                for t in threads:
                    t.join(timeout=60)
                abort.clear()
            if errors:
                raise errors[0]
            if stuck:
                raise RuntimeError("a program of a threaded persistent launch did not finish "
                                   "(a grid barrier that never opens?)")

    run = interp.InterpretedFunction.run
    rewrite = interp.InterpretedFunction.rewrite
    patch_lang = interp._patch_lang

    # A function's first rewrite adds the interpreter's globals to its module's globals, which
    # every call iterates (_patch_lang): the two under one lock, or a program calling into that
    # module while another rewrites there sees "dictionary changed size during iteration".
    def locked_rewrite(self):
        with rewrite_lock:
            return rewrite(self)

    def locked_patch_lang(fn):
        with rewrite_lock:
            return patch_lang(fn)

    def threaded_run(self, *args, grid, warmup, **kwargs):
        inner = self.rewrite
        self.rewrite = lambda: Concurrent(inner())
        try:
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            del self.rewrite

    switch = sys.getswitchinterval()
    builder.__class__ = PerThreadGrid
    interp.InterpretedFunction.run = threaded_run
    interp.InterpretedFunction.rewrite = locked_rewrite
    interp._patch_lang = locked_patch_lang
    sys.setswitchinterval(1e-5)  # spinning programs hand the GIL over quickly
    try:
        yield
    finally:
        builder.__class__ = base
        interp.InterpretedFunction.run = run
        interp.InterpretedFunction.rewrite = rewrite
        interp._patch_lang = patch_lang
        sys.setswitchinterval(switch)


def gpu_sized_tilings(monkeypatch):
    """Make the Triton tiling heuristic see an sm_90-sized GPU (132 multiprocessors) on the CPU."""
    import importlib

    C = importlib.import_module("fusedrnn.backends.triton.config")
    monkeypatch.setattr(C.Device, "of", staticmethod(lambda device, interpret: C.SM90))
