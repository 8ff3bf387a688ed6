"""The suite's own setup (tests/conftest.py) where the GPU check depends on it: the per-test
time limit and its per-test override."""

import os

import pytest

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

needs_interpreter = pytest.mark.skipif(triton is None or os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="no Triton interpreter (no triton, or a GPU runs the kernels)")


@needs_interpreter
def test_interpreter_patches_the_language_once_per_launch(monkeypatch):
    """A launch whose kernel calls a @triton.jit helper at every step of a loop patches
    triton.language once (four _patch_builtin calls: tl, tl.tensor, tl.math, the descriptor
    base), not once more per helper call, and computes what the helper says."""
    import torch
    from triton.runtime import interpreter as interp

    calls = []
    builtin = interp._patch_builtin
    monkeypatch.setattr(interp, "_patch_builtin", lambda *a: calls.append(a[0]) or builtin(*a))
    x = torch.zeros(4)
    _steps_kernel[(1,)](x, 5)
    assert x.tolist() == [31.0] * 4
    assert len(calls) == 4, calls


@needs_interpreter
def test_interpreter_numpy_dtypes_as_the_interpreter_gives_them():
    """The suite's cached numpy-dtype lookup answers as the interpreter's own for scalars,
    blocks of two shapes and pointers, asked twice (the second answer from the cache)."""
    from triton.runtime import interpreter as interp

    scalars = [tl.int1, tl.float16, tl.bfloat16, tl.float32, tl.float64, tl.int8, tl.uint8, tl.int16,
               tl.uint16, tl.int32, tl.uint32, tl.int64, tl.uint64, tl.float8e5, tl.float8e4nv]
    types = scalars + [tl.block_type(t, s) for t in scalars for s in ([4], [2, 8])] + [
        tl.pointer_type(tl.float32), tl.block_type(tl.pointer_type(tl.float16), [4])]
    original = interp._get_np_dtype.original  # the suite's lookup keeps the interpreter's
    assert original.__name__ == "_get_np_dtype"
    for _ in range(2):
        assert [interp._get_np_dtype(t) for t in types] == [original(t) for t in types]
