"""Timing and records: the measuring half of the benchmark suite.

- Warm-up, then repeated runs; median with p20 / p80.
- All providers of one group are timed in the same run, alternating (A B C, C B A, ...),
  so ratios between them come from that run only.
- GPU: CUDA events around each call, inputs rotated among several sets so the cache does
  not flatter; CPU: time.perf_counter.
- Every timing is one JSON object per line (docs/guide.md, "Benchmark records").
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

RECORD_KEYS = ("date", "git", "device", "torch", "cuda", "cudnn", "triton", "provider", "variant",
               "mode", "dtype", "B", "T", "I", "H", "median_ms", "p20_ms", "p80_ms", "peak_mem_mb")


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated q-quantile (q in [0, 1]) of xs."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_mem_mb: Optional[float]
    samples: int


def time_group(fns: dict[str, Callable[[int], None]], device: torch.device, *, warmup: int = 2,
               reps: int = 10, rotate: int = 1, min_time_s: float = 0.0,
               budget_s: Optional[float] = None) -> dict[str, Timing]:
    """Time every fn of a group, alternating between them.

    Each fn takes the index of the input set to use (0 .. rotate - 1).  Runs ``warmup``
    untimed rounds, then at least ``reps`` timed rounds (more, up to 5x, until
    ``min_time_s`` has passed).  With ``budget_s``, the timed rounds are cut to what fits
    in that many seconds (at least 3), judged from the last warm-up round.  Returns a
    Timing per name.
    """
    names = list(fns)
    cuda = device.type == "cuda"
    round_s = 0.0
    for w in range(warmup):
        t0 = time.perf_counter()
        for n in names:
            fns[n](w % rotate)
        if cuda:
            torch.cuda.synchronize(device)
        round_s = time.perf_counter() - t0
    if budget_s is not None and round_s > 0:
        reps = max(3, min(reps, int(budget_s / round_s)))
    samples: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, Optional[float]] = {n: None for n in names}
    if cuda:
        for n in names:  # peak memory of one call, measured apart from the timing
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fns[n](0)
            torch.cuda.synchronize(device)
            peaks[n] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    start_all = time.perf_counter()
    r = 0
    while r < reps or (time.perf_counter() - start_all < min_time_s and r < 5 * reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            k = r % rotate
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fns[n](k)
                b.record()
                b.synchronize()
                samples[n].append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fns[n](k)
                samples[n].append((time.perf_counter() - t0) * 1e3)
        r += 1
    return {
        n: Timing(statistics.median(v), percentile(v, 0.2), percentile(v, 0.8), peaks[n], len(v))
        for n, v in samples.items()
    }


# ---- environment -------------------------------------------------------------------------


def git_revision() -> Optional[tuple[str, bool]]:
    """(short commit, whether tracked files differ from it) of the fusedrnn checkout, or None
    outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        rev = out.stdout.strip()
        if out.returncode != 0 or not rev:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None


def _git_rev() -> str:
    rev = git_revision()
    return "unknown" if rev is None else rev[0] + ("-dirty" if rev[1] else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_slug(device: torch.device) -> str:
    """A short file-name-safe device name: e.g. h100-sxm, h200, cpu-epyc-2c."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        m = re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", name)
        slug = (m.group(1) if m else name).lower()
        if slug == "h100":
            slug += "-sxm" if "HBM3" in name or "SXM" in name else "-pcie" if "PCIe" in name else ""
        return re.sub(r"[^a-z0-9.-]+", "-", slug)
    words = [w for w in re.split(r"[^a-z0-9]+", cpu_name().lower()) if w and w not in ("amd", "intel", "r", "tm", "cpu", "processor")]
    family = words[0] if words else "cpu"
    return f"cpu-{family}-{torch.get_num_threads()}c"


def environment(device: torch.device) -> dict:
    triton_version = None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": _git_rev(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()} ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": triton_version,
    }


def make_record(env: dict, *, provider: str, variant: str, mode: str, dtype: torch.dtype, B: int, T: int,
                I: int, H: int, timing: Timing, L: int = 1) -> dict:
    """One JSON record (RECORD_KEYS, and "L" for a model of several layers)."""
    rec = dict(env)
    rec.update(provider=provider, variant=variant, mode=mode, dtype=str(dtype).replace("torch.", ""),
               B=B, T=T, I=I, H=H, median_ms=round(timing.median_ms, 4), p20_ms=round(timing.p20_ms, 4),
               p80_ms=round(timing.p80_ms, 4),
               peak_mem_mb=None if timing.peak_mem_mb is None else round(timing.peak_mem_mb, 2))
    out = {k: rec[k] for k in RECORD_KEYS}
    if L != 1:
        out["L"] = L
    return out


def append_records(records: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_records(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["RECORD_KEYS", "Timing", "append_records", "asdict", "device_slug", "environment",
           "make_record", "percentile", "read_records", "time_group"]
