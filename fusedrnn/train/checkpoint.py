"""Atomic writes: a file is written to a temporary name in the same directory, flushed to
disk, then renamed over the target, so a crash never leaves a half-written checkpoint."""

from __future__ import annotations

import json
import os
from typing import Any

import torch


def _atomic(path: str, write) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(obj: Any, path: str) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    _atomic(path, lambda f: torch.save(obj, f))


def load(path: str, map_location="cpu") -> Any:
    """torch.load under weights_only=True: a checkpoint holds tensors, state dicts and plain
    values (step, history, config, RNG states), and nothing that runs code when loaded."""
    return torch.load(path, map_location=map_location, weights_only=True)


def write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")
