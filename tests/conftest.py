"""Test-suite setup.

- Freshly allocated outputs are poisoned: torch.empty / empty_like / new_empty fill with
  NaN here (Python-side allocations), and FUSEDRNN_POISON_OUTPUTS=1 makes the C++ ops
  NaN-fill their outputs before the kernels run, so an element a kernel forgets to write
  fails loudly.
- Triton kernels run through the interpreter on CPU tensors (TRITON_INTERPRET=1) unless
  a GPU is present; inside a launch, the interpreter patches triton.language once, not at
  every call of a helper, and looks each type's numpy dtype up once.
- ``cuda_matmul`` sets torch.backends.cuda.matmul flags for one test.
- FUSEDRNN_TEST_TIMEOUT_S=N fails a test that runs longer than N seconds (its own
  ``timeout_s(n)`` marker's n where it has one; SIGALRM, checked
  when control is back in Python; benchmarks/gpu_check.sh sets it, with an outer timeout
  for a kernel that never returns).
- Under pytest-xdist (``make test`` runs one worker per core) each worker runs torch with one
  thread: the workers share the cores (two threads per worker tripled the suite's time on
  two cores).  The native kernels' threaded paths keep their own tests
  (the fixture ``two_threads``), and tests that start a process get the default.
"""

import os
import signal

os.environ.setdefault("FUSEDRNN_POISON_OUTPUTS", "1")
os.environ.setdefault("FUSEDRNN_BACKEND", "auto")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _speed_up_the_interpreter():
    """Two costs of the Triton interpreter that are not the kernels' own.

    The interpreter patches triton.language for a launch, and again at every call
    of a @triton.jit helper inside it (inspect.getmembers over tl, tl.math and tl.tensor,
    about 0.15 ms a call, never undone): a fifth of the time of the interpreted tests went
    there.  Inside a launch, a helper whose language modules the launch has patched already
    finds nothing left to patch; this skips those calls.  Any other call patches as before."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import triton.language as tl
        from triton.runtime import interpreter as interp
    except ImportError:
        return
    patch_lang, active = interp._patch_lang, set()

    class Launch:  # the launch's scope: restoring it ends the launch
        def __init__(self, scope):
            self.scope = scope

        def restore(self):
            active.clear()
            self.scope.restore()

    class Nothing:
        def restore(self):
            pass

    def once_per_launch(fn):
        langs = {id(v) for v in fn.__globals__.values() if v is tl or v is tl.core}
        if active and langs <= active:
            return Nothing()
        scope = patch_lang(fn)
        if active:  # a helper that sees other modules than its launch: patched as before
            active.update(langs)
            return scope
        active.update(langs)
        return Launch(scope)

    interp._patch_lang = once_per_launch

    # Each value's numpy dtype: the interpreter builds a 17-entry table at every call (16 us,
    # 740,000 calls in the layer-norm and GRU op tests); its answers, kept per scalar type (a
    # block's is its element's; a pointer's, uint64, comes at once).
    get_np_dtype, np_dtypes = interp._get_np_dtype, {}

    def cached_np_dtype(tt_dtype):
        if isinstance(tt_dtype, tl.block_type):
            tt_dtype = tt_dtype.element_ty
        if isinstance(tt_dtype, tl.pointer_type):
            return get_np_dtype(tt_dtype)
        got = np_dtypes.get(tt_dtype)
        if got is None:
            got = np_dtypes[tt_dtype] = get_np_dtype(tt_dtype)
        return got

    cached_np_dtype.original = get_np_dtype
    interp._get_np_dtype = cached_np_dtype


_speed_up_the_interpreter()
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

_empty, _empty_like = torch.empty, torch.empty_like
_new_empty = torch.Tensor.new_empty


def _poison(t):
    if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_meta and t.numel():
        t.fill_(float("nan"))
    return t


def _poisoned_empty(*args, **kwargs):
    return _poison(_empty(*args, **kwargs))


def _poisoned_empty_like(*args, **kwargs):
    return _poison(_empty_like(*args, **kwargs))


def _poisoned_new_empty(self, *args, **kwargs):
    return _poison(_new_empty(self, *args, **kwargs))


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """NaN-fill torch.empty & co. for the duration of every test."""
    if torch.compiler.is_compiling():
        yield
        return
    monkeypatch.setattr(torch, "empty", _poisoned_empty)
    monkeypatch.setattr(torch, "empty_like", _poisoned_empty_like)
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned_new_empty)
    yield


@pytest.fixture(autouse=True, scope="module")
def _one_thread(request):
    """Modules marked ``one_thread`` run with one torch thread (restored afterwards)."""
    if request.node.get_closest_marker("one_thread") is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cuda_matmul():
    """set(name, value): a torch.backends.cuda.matmul flag (allow_tf32, ...) for one test,
    restored after.  (monkeypatch cannot restore these: they live behind the module's
    __getattr__, not in its __dict__, so pytest 9 deletes them on undo and fails.)"""
    m = torch.backends.cuda.matmul
    saved = {}

    def set_(name, value):
        saved.setdefault(name, getattr(m, name))
        setattr(m, name, value)

    yield set_
    for name, value in saved.items():
        setattr(m, name, value)


_TIMEOUT_S = float(os.environ.get("FUSEDRNN_TEST_TIMEOUT_S", "0") or 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if _TIMEOUT_S <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return
    own = item.get_closest_marker("timeout_s")
    limit = float(own.args[0]) if own is not None else _TIMEOUT_S

    def _expired(signum, frame):
        pytest.fail(f"over its {limit:g} s limit (FUSEDRNN_TEST_TIMEOUT_S={_TIMEOUT_S:g}, timeout_s marker)",
                    pytrace=False)

    before = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def two_threads():
    """The native kernels' threaded paths (at::parallel_for over units and rows, threaded
    GEMMs), whatever thread count the suite runs with (one per xdist worker)."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)
