"""The compile gate (benchmarks/compile_gate.py) catches a configuration that would not
launch, or would run badly, on the GPU: a deliberately oversized Triton tile and a CUDA
shape too large for the persistent kernel.  (make test runs the gate itself.)"""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys, tempfile, torch
sys.path.insert(0, "benchmarks")
import compile_gate as G
from fusedrnn.backends.triton import aot as gate
kc = gate.kernel_configs(torch.bfloat16, 10, 16, 128, 128, dict(autotune=False, designs=("step",)))[0]
big = kc._replace(constexprs=dict(kc.constexprs, BB=32, BH=32, BK=32), num_warps=1)  # 1 warp for 32x32x4 tiles
rows = [G.compile_triton(("triton", 90, gate.describe(big), big))]
out = {"triton": G.check(rows)}
print("JSON" + json.dumps(out))
"""


def _run(script):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    return json.loads(next(l for l in r.stdout.splitlines() if l.startswith("JSON"))[4:])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_oversized_triton_tile_is_caught():
    out = _run(SCRIPT)
    assert out["triton"], "a 32 x 32 x 4-gate tile on one warp passed the gate"
    assert any("spills" in p or "shared memory" in p or "registers" in p or "compile failed" in p
               for p in out["triton"])


def test_oversized_cuda_shape_is_not_persistent(monkeypatch):
    if "TRITON_INTERPRET" in os.environ:  # compile_gate pops it on import: restore it afterwards
        monkeypatch.setenv("TRITON_INTERPRET", os.environ["TRITON_INTERPRET"])
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import compile_gate as G

    if not G.nvcc():
        pytest.skip("nvcc not found")
    from fusedrnn.bench import suite

    big = suite.Point(16, 100, 8192, 8192, "bf16")
    orig = suite.PRESETS["anchors"]["points"]
    suite.PRESETS["anchors"]["points"] = [big]
    try:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            rows = G.cuda_plans(tmp)
    finally:
        suite.PRESETS["anchors"]["points"] = orig
    assert rows and all(not r["ok"] for r in rows), rows  # the plan refuses it: per-step runs
    problems = G.check(rows)
    assert any("not persistent" in p for p in problems)


def test_non_coherent_load_in_a_persistent_kernel_is_caught(tmp_path, monkeypatch):
    """A persistent kernel that reads through a const __restrict__ pointer (the read-only,
    non-coherent path: LDG...CONSTANT) is a gate failure: the exchange buffers of such a
    kernel change under it during the launch.  The same kernel without __restrict__ passes."""
    if "TRITON_INTERPRET" in os.environ:
        monkeypatch.setenv("TRITON_INTERPRET", os.environ["TRITON_INTERPRET"])
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import compile_gate as G

    if not G.nvcc() or not os.path.exists(G.cuobjdump()):
        pytest.skip("nvcc or cuobjdump not found")
    found = {}
    for name, qual in (("nc", "__restrict__"), ("plain", "")):
        src = tmp_path / f"probe_{name}.cu"
        src.write_text("__global__ void persistent_probe_kernel(const float* %s x, float* %s y, int n) {\n"
                       "  for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = x[i] * 2.0f;\n}\n" % (qual, qual))
        rows = G.compile_cuda(("cuda", 90, str(src), str(tmp_path)))
        assert rows and rows[0]["ok"], rows
        found[name] = [p for p in G.check(rows) if "non-coherent" in p]
    assert found["nc"], "a read-only-path load in a persistent kernel passed the gate"
    assert not found["plain"], found["plain"]
