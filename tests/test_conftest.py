"""The suite's own setup (tests/conftest.py) where the GPU check depends on it: the per-test
time limit and its per-test override."""

import os

pytest_plugins = ["pytester"]

HERE = os.path.dirname(os.path.abspath(__file__))


def test_time_limit_and_its_per_test_override(pytester, monkeypatch):
    """FUSEDRNN_TEST_TIMEOUT_S fails a test over the limit; a timeout_s(n) marker gives one
    test its own limit (the GPU check's cold-compile tests)."""
    with open(os.path.join(HERE, "conftest.py")) as f:
        pytester.makeconftest(f.read())
    pytester.makeini("[pytest]\nmarkers =\n    timeout_s(n): own limit\n    gpu: gpu\n")
    pytester.makepyfile(test_probe="""
import time
import pytest

def test_over_the_limit():
    time.sleep(1.5)

@pytest.mark.timeout_s(10)
def test_own_limit():
    time.sleep(1.5)
""")
    monkeypatch.setenv("FUSEDRNN_TEST_TIMEOUT_S", "0.5")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_over_the_limit*0.5 s limit*"])


try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
else:
    @triton.jit
    def _twice_plus_one(v):
        return 2 * v + 1

    @triton.jit
    def _steps_kernel(x_ptr, n: tl.constexpr):
        v = tl.load(x_ptr + tl.arange(0, 4))
        for _ in range(n):
            v = _twice_plus_one(v)
        tl.store(x_ptr + tl.arange(0, 4), v)


def test_interpreter_patches_the_language_once_per_launch(monkeypatch):
    """A launch whose kernel calls a @triton.jit helper at every step of a loop patches
    triton.language once (four _patch_builtin calls: tl, tl.tensor, tl.math, the descriptor
    base), not once more per helper call, and computes what the helper says."""
    import pytest

    if triton is None or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no Triton interpreter (no triton, or a GPU runs the kernels)")
    import torch
    from triton.runtime import interpreter as interp

    calls = []
    builtin = interp._patch_builtin
    monkeypatch.setattr(interp, "_patch_builtin", lambda *a: calls.append(a[0]) or builtin(*a))
    x = torch.zeros(4)
    _steps_kernel[(1,)](x, 5)
    assert x.tolist() == [31.0] * 4
    assert len(calls) == 4, calls
