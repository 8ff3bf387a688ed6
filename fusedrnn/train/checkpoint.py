"""Training checkpoints: written atomically (fusedrnn.report), loaded weights-only."""

from __future__ import annotations

from typing import Any

import torch

from ..report import atomic_write


def save(obj: Any, path: str) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str, map_location="cpu") -> Any:
    """torch.load under weights_only=True: a checkpoint holds tensors, state dicts and plain
    values (step, history, config, RNG states), and nothing that runs code when loaded."""
    return torch.load(path, map_location=map_location, weights_only=True)
