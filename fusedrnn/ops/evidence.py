"""What real GPUs have shown, which ``backend="auto"`` follows on a GPU.

The facts live in ``gpu_evidence.json`` beside this file (package data):

- ``validated``: ``{backend: {arch: {"note", "fingerprint"}}}``, the GPU classes (compute
  capability, ``"sm_90"``) on which that backend's GPU tests have passed on real hardware,
  each with the backend's fingerprint at that run (:meth:`Backend.fingerprint`: a digest of
  its kernel sources and their compiler).  A validation counts only while the fingerprint
  matches the installed kernels; after they change it is "stale" and ``auto`` treats the
  backend as unvalidated.  The GPU check records a validation when a backend's GPU tests all
  pass (``python -m fusedrnn evidence record ...``).
- ``faster``: rules, each resting on committed measurements, under which a fused backend
  beats cuDNN on a plain LSTM: ``{"arch", "dtype" ("bfloat16"), "mode" ("fwd" or
  "fwd+bwd"), "B": [lo, hi], "H": [lo, hi], "backend", "source"}``, the batch and hidden
  sizes as inclusive ranges that the measured points span, ``source`` the records file and
  date they come from.

With no rule for a GPU class, plain LSTMs run on cuDNN there, and the backends keep their
default order for regularized ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
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
    validated = {b: {a: (v if isinstance(v, dict) else {"note": str(v), "fingerprint": None})
                     for a, v in archs.items()} for b, archs in data.get("validated", {}).items()}
    return {"validated": validated, "faster": faster}


def status(backend: str, arch: str, fingerprint: Optional[str]) -> tuple[str, Optional[str]]:
    """("validated", note) when ``backend``'s GPU tests passed on GPUs of class ``arch`` with
    these kernels (``fingerprint``, the installed backend's), ("stale", note) when they passed
    at another version of the kernels, ("none", None) when they never ran there."""
    rec = load()["validated"].get(backend, {}).get(arch)
    if rec is None:
        return "none", None
    if fingerprint is not None and rec.get("fingerprint") == fingerprint:
        return "validated", rec["note"]
    return "stale", rec["note"]


def faster_than_cudnn(arch: str, dtype: str, B: int, H: int, mode: str) -> Optional[dict]:
    """The first rule under which a fused backend beats cuDNN on a plain LSTM of this GPU
    class, dtype (``"bfloat16"``) and mode at batch B and hidden size H, or None."""
    for r in load()["faster"]:
        if (r["arch"], r["dtype"], r["mode"]) == (arch, dtype, mode) and \
                r["B"][0] <= B <= r["B"][1] and r["H"][0] <= H <= r["H"][1]:
            return r
    return None


def record(backend: str, arch: str, note: str, fingerprint: str, path: str = PATH) -> dict:
    """Write (or replace) the validation of ``backend`` on ``arch`` with this fingerprint."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    data.setdefault("validated", {}).setdefault(backend, {})[arch] = {"note": note, "fingerprint": fingerprint}
    data.setdefault("faster", [])
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    load.cache_clear()
    return data


# the GPU test file of each backend: a validation needs every test of it to pass
GPU_TEST_FILES = {"cuda": "test_cuda", "triton": "test_triton_gpu"}


def junit_verdicts(path: str) -> list[tuple[str, int, int]]:
    """(backend, tests passed, tests failed or errored) of each backend's GPU test file in a
    JUnit XML report; skipped tests count as neither."""
    import xml.etree.ElementTree as ET

    out = []
    cases = list(ET.parse(path).getroot().iter("testcase"))
    for backend, stem in GPU_TEST_FILES.items():
        mine = [c for c in cases if c.get("classname", "").split(".")[-1] == stem]
        failed = sum(1 for c in mine if c.find("failure") is not None or c.find("error") is not None)
        skipped = sum(1 for c in mine if c.find("skipped") is not None)
        out.append((backend, len(mine) - failed - skipped, failed))
    return out


def main(argv=None) -> int:
    """``python -m fusedrnn evidence record --backend B --arch sm_XY --note TEXT [--file F]``:
    record a passed GPU check of backend B with the installed kernels' fingerprint (the GPU
    check runs it for each backend whose GPU tests all passed);
    ``python -m fusedrnn evidence show``: each validation and whether it still counts."""
    ap = argparse.ArgumentParser(prog="python -m fusedrnn evidence")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--backend", required=True)
    rec.add_argument("--arch", required=True)
    rec.add_argument("--note", required=True)
    rec.add_argument("--file", default=PATH)
    sub.add_parser("show")
    junit = sub.add_parser("record-junit", help="record every backend whose GPU test file passed whole")
    junit.add_argument("xml", help="the GPU tests' JUnit XML (pytest --junitxml)")
    junit.add_argument("--note", required=True)
    junit.add_argument("--file", default=PATH)
    a = ap.parse_args(argv)
    from .. import backends

    if a.cmd == "record-junit":
        import torch

        major, minor = torch.cuda.get_device_capability()
        arch = f"sm_{major}{minor}"
        note = f"{torch.cuda.get_device_name()}, {a.note}"
        for backend, n_pass, n_fail in junit_verdicts(a.xml):
            if n_pass and not n_fail:
                main(["record", "--backend", backend, "--arch", arch, "--note", note, "--file", a.file])
            else:
                print(f"evidence: {backend} not recorded on {arch}: {n_pass} passed, {n_fail} failed")
        return 0

    if a.cmd == "record":
        be = backends.get(a.backend)
        fp = be.fingerprint() if be is not None else None
        if fp is None:
            print(f"evidence: backend {a.backend!r} has no fingerprint (nothing GPU-specific to validate)",
                  file=sys.stderr)
            return 2
        record(a.backend, a.arch, a.note, fp, a.file)
        print(f"evidence: {a.backend} validated on {a.arch} at fingerprint {fp} ({a.file})")
        return 0
    for b, archs in load()["validated"].items():
        be = backends.get(b)
        for arch, v in archs.items():
            state, _ = status(b, arch, be.fingerprint() if be is not None else None)
            print(f"{b} on {arch}: {state} (recorded {v.get('fingerprint')}): {v['note']}")
    return 0



__all__ = ["PATH", "faster_than_cudnn", "load", "record", "status"]
