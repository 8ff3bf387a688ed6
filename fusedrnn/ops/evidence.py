"""What real GPUs have shown, which ``backend="auto"`` follows on a GPU (DESIGN.md).

The facts live in ``gpu_evidence.json`` beside this file (package data), written from
committed benchmark records and GPU-check verdicts by ``python -m fusedrnn bench evidence``:

- ``validated``: ``{backend: {arch: note}}``, the GPU classes (compute capability,
  ``"sm_90"``) on which that backend's GPU tests have passed on real hardware;
- ``faster``: measurements in which a fused backend beat cuDNN on a plain LSTM:
  ``{"arch", "gpu", "dtype", "B", "H", "mode" ("fwd" or "fwd+bwd"), "backend",
  "cudnn_ms", "fused_ms", "source"}``.

With no record for a GPU class, plain LSTMs run on cuDNN there, and the backends keep
their default order for regularized ones.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_evidence.json")


@functools.lru_cache(maxsize=None)
def load(path: str = PATH) -> dict:
    """The evidence file as a dict with keys ``validated`` and ``faster`` (empty if absent)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    return {"validated": dict(data.get("validated", {})), "faster": list(data.get("faster", []))}


def validated(backend: str, arch: str) -> Optional[str]:
    """The note of a passed GPU check of ``backend`` on GPUs of class ``arch``, or None."""
    return load()["validated"].get(backend, {}).get(arch)


def faster_than_cudnn(arch: str, dtype: str, B: int, H: int, mode: str) -> Optional[dict]:
    """The best record in which a fused backend beat cuDNN on a plain LSTM of this GPU
    class, dtype (``"bfloat16"``), batch and hidden size in this mode, or None."""
    best = None
    for r in load()["faster"]:
        if (r.get("arch"), r.get("dtype"), r.get("B"), r.get("H"), r.get("mode")) != (arch, dtype, B, H, mode):
            continue
        if not r.get("fused_ms", 0) < r.get("cudnn_ms", 0):
            continue
        if best is None or r["fused_ms"] < best["fused_ms"]:
            best = r
    return best


__all__ = ["PATH", "faster_than_cudnn", "load", "validated"]
