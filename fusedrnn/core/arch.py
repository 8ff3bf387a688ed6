"""The compute capability of a CUDA device, as the decisions name it ("sm_90").

Dimension letters: none (device facts only).
"""

from __future__ import annotations

import torch

from .trace import trace_constant

_ARCHS: dict[int, str] = {}


def device_arch(device: torch.device) -> str:
    """"sm_XY" for a CUDA device of compute capability X.Y, "" for any other device."""
    if device.type != "cuda":
        return ""
    return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())


@trace_constant  # a trace-time constant under torch.compile
def _cuda_arch(index: int) -> str:
    if index not in _ARCHS:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCHS[index] = f"sm_{major}{minor}"
    return _ARCHS[index]


def arch_capability(arch: str) -> tuple[int, int]:
    """"sm_90" -> (9, 0); "sm_120" -> (12, 0)."""
    num = arch.partition("_")[2]
    return int(num[:-1]), int(num[-1])


__all__ = ["arch_capability", "device_arch"]
