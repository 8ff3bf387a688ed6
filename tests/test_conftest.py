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
