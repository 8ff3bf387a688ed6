"""The compile gate of the triton backend, on the CPU: the kernel configurations the
dispatcher chooses (the LSTM's and the GRU's) compile for sm_90 (and sm_80) with Triton's own compiler and ptxas,
within the device's shared memory, without (beyond a few bytes of) register spills.

Runs in a subprocess without TRITON_INTERPRET (this process may have the interpreter on,
which replaces the kernels by Python functions).  A few representative configurations by
default; FUSEDRNN_SLOW=1 compiles the whole grid (python -m fusedrnn.backends.triton.aot).

The whole grid's results (354 configurations, sm_90 and sm_80: no compile failure, at most
116 bytes of spills with 4 / 8 warps, up to 2.4 KB for per-step batch norm with B > 64) are in
benchmarks/NOTES.md.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import json, torch
from fusedrnn.backends.triton import aot as gate
cases = [
    (torch.bfloat16, 32, 256, 256, dict(bn="train", mask="shared", lengths=True, reverse=True)),
    (torch.float16, 64, 128, 96, dict(mask="per_step")),
    (torch.float32, 8, 64, 64, dict(bn="eval")),
    (torch.bfloat16, 32, 256, 256, dict(zoneout="train", mask="shared", lengths=True, reverse=True)),
    (torch.float16, 16, 768, 768, dict(zoneout="eval")),
    (torch.bfloat16, 32, 256, 128, dict(bn="layer", zoneout="train", lengths=True, reverse=True)),
    (torch.float32, 64, 512, 512, dict(cell="gru")),
    (torch.bfloat16, 128, 1024, 1024, dict(cell="gru", bn="train", mask="shared", lengths=True, reverse=True,
                                           zoneout="train")),
    (torch.float16, 16, 768, 768, dict(cell="gru", bn="eval", mask="per_step", zoneout="eval", bias=False)),
]
out = []
for dt, B, H, R, o in cases:
    for kc in gate.kernel_configs(dt, 10, B, H, R, dict(o, autotune=False, designs=("auto",))):
        for arch in ARCHS:
            r = gate.compile_config(kc, arch)
            out.append(dict(r, arch=arch, config=gate.describe(kc)))
print("JSON" + json.dumps(out))
"""


def _run(archs, script=SCRIPT, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", f"ARCHS = {archs!r}\n" + script], env=env,
                       cwd=root, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("JSON"))
    return json.loads(line[4:])


def test_chosen_configs_compile_for_sm90_and_sm80():
    results = _run([90, 80])
    assert results
    for r in results:
        where = f"sm_{r['arch']} {r['config']}"
        assert r["ok"], f"{where}: {r['error']}"
        assert r["ptxas_ok"], where
        assert r["shared"] <= (227 if r["arch"] >= 90 else 163) * 1024, where
        assert (r["spills"] or 0) <= 256, f"{where}: {r['spills']} bytes of spills"


@pytest.mark.skipif(os.environ.get("FUSEDRNN_SLOW") != "1", reason="FUSEDRNN_SLOW=1 compiles the whole grid")
def test_whole_grid_compiles():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "fusedrnn.backends.triton.aot", "--arch", "90", "80"],
                       env=env, capture_output=True, text=True, timeout=7200)
    assert "FAIL" not in r.stdout, r.stdout[-5000:]
