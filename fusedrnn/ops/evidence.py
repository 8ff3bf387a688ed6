"""What real GPUs have shown, which ``backend="auto"`` follows on a GPU.

The facts live in ``gpu_evidence.json`` beside this file (package data), written by hand
from committed benchmark records (benchmarks/results/) and GPU-check verdicts:

- ``validated``: ``{backend: {arch: note}}``, the GPU classes (compute capability,
  ``"sm_90"``) on which that backend's GPU tests have passed on real hardware;
- ``faster``: rules, each resting on committed measurements, under which a fused backend
  beats cuDNN on a plain LSTM: ``{"arch", "dtype" ("bfloat16"), "mode" ("fwd" or
  "fwd+bwd"), "B": [lo, hi], "H": [lo, hi], "backend", "source"}``, the batch and hidden
  sizes as inclusive ranges that the measured points span, ``source`` the records file and
  date they come from.

With no rule for a GPU class, plain LSTMs run on cuDNN there, and the backends keep their
default order for regularized ones.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_evidence.json")
_RULE_KEYS = ("arch", "dtype", "mode", "B", "H", "backend", "source")


@functools.lru_cache(maxsize=None)
def load(path: str = PATH) -> dict:
    """The evidence file as a dict with keys ``validated`` and ``faster`` (empty if absent).
    A malformed rule raises ValueError naming it (the file is the project's own)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    faster = list(data.get("faster", []))
    for r in faster:
        missing = [k for k in _RULE_KEYS if k not in r]
        ranges_ok = all(isinstance(r.get(k), list) and len(r[k]) == 2 and r[k][0] <= r[k][1] for k in ("B", "H"))
        if missing or not ranges_ok or r.get("mode") not in ("fwd", "fwd+bwd"):
            raise ValueError(f"{path}: a 'faster' rule needs {_RULE_KEYS} with B and H as [lo, hi] ranges and "
                             f"mode 'fwd' or 'fwd+bwd', got {r}")
    return {"validated": dict(data.get("validated", {})), "faster": faster}


def validated(backend: str, arch: str) -> Optional[str]:
    """The note of a passed GPU check of ``backend`` on GPUs of class ``arch``, or None."""
    return load()["validated"].get(backend, {}).get(arch)


def faster_than_cudnn(arch: str, dtype: str, B: int, H: int, mode: str) -> Optional[dict]:
    """The first rule under which a fused backend beats cuDNN on a plain LSTM of this GPU
    class, dtype (``"bfloat16"``) and mode at batch B and hidden size H, or None."""
    for r in load()["faster"]:
        if (r["arch"], r["dtype"], r["mode"]) == (arch, dtype, mode) and \
                r["B"][0] <= B <= r["B"][1] and r["H"][0] <= H <= r["H"][1]:
            return r
    return None


__all__ = ["PATH", "faster_than_cudnn", "load", "validated"]
