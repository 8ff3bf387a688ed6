"""The ``cuda`` backend: the CUDA kernels of fusedrnn._C (csrc/cuda/): a persistent
cooperative design where its layout fits, else one cuBLAS GEMM and one fused pointwise kernel
per step (``cuda_persistent_layout`` says which, :func:`cuda_design`).

It is offered only on GPUs the build carries code for: the build records its targets
(``fusedrnn._C.CUDA_TARGETS``, from TORCH_CUDA_ARCH_LIST), and :func:`cuda_arch_reason`
applies the CUDA compatibility rules to a GPU's compute capability.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..core.arch import arch_capability
from ..core.contract import Config, NormMode
from . import compiled
from .compiled import CompiledBackend, has_kernel


def parse_targets(spec: str) -> tuple[tuple[str, int, int, bool], ...]:
    """"sm_80/sm_90/compute_90" -> (("sm", 8, 0, False), ("sm", 9, 0, False), ("compute", 9, 0, False));
    the last field marks an arch-specific target (sm_90a), which runs on that exact arch only."""
    out = []
    for tok in spec.replace(";", "/").split("/"):
        kind, _, num = tok.strip().partition("_")
        specific = num.endswith(("a", "f"))
        num = num.rstrip("af")
        if kind in ("sm", "compute") and num.isdigit() and len(num) >= 2:
            out.append((kind, int(num[:-1]), int(num[-1]), specific))
    return tuple(out)


TARGETS = parse_targets(getattr(compiled._C, "CUDA_TARGETS", "") or "") if compiled.LOAD_ERROR is None else ()


def targets_text(targets=None) -> str:
    t = TARGETS if targets is None else targets
    return ", ".join(f"{k}_{a}{b}{'a' if s else ''}" for k, a, b, s in t) or "none"


def cuda_arch_reason(capability: tuple[int, int], targets=None) -> Optional[str]:
    """None if the build has code a GPU of this compute capability runs, else why not.

    A kernel image sm_XY runs on GPUs of the same major version and minor >= Y (sm_80 on an
    sm_86 / sm_89 card); PTX compute_XY is JIT-compiled for any GPU of capability >= X.Y;
    an arch-specific image (sm_90a) runs on that arch only."""
    targets = TARGETS if targets is None else targets
    major, minor = capability
    for kind, a, b, specific in targets:
        if specific and (a, b) != (major, minor):
            continue
        if kind == "sm" and a == major and b <= minor:
            return None
        if kind == "compute" and (a, b) <= (major, minor):
            return None
    return (f"fusedrnn._C has no kernel image or PTX for this GPU (sm_{major}{minor}); it was built "
            f"for {targets_text(targets)} (rebuild with TORCH_CUDA_ARCH_LIST including {major}.{minor})")


# Options whose CUDA kernels have compiled but not yet passed the GPU tests (zoneout, layer
# norm): refused unless this is "1" (tests/test_cuda.py and the GPU check's sanitizer set it).
UNVERIFIED_ENV = "FUSEDRNN_CUDA_UNVERIFIED"


class CUDABackend(CompiledBackend):
    autocast_native = True  # 16-bit data, float32 cell state and accumulation
    cells_note = " (the GRU waits until the LSTM's CUDA kernels have run on a GPU)"

    def __init__(self):
        super().__init__("cuda", "cuda", "CUDA")

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        why = super().unavailable_reason(device)
        if why is not None:
            return why
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return cuda_arch_reason(torch.cuda.get_device_capability(device))

    def unsupported_reason(self, cfg: Config) -> Optional[str]:
        if cfg.arch and (why := cuda_arch_reason(arch_capability(cfg.arch))) is not None:
            return why
        new = [name for name, on in (("zoneout", cfg.zoneout), ("layer norm", cfg.norm == NormMode.LAYER)) if on]
        if new and os.environ.get(UNVERIFIED_ENV) != "1":
            return (f"the CUDA kernels' {' and '.join(new)} compiled but have not yet run on a GPU: until the GPU "
                    f"check validates them they run on triton ({UNVERIFIED_ENV}=1 admits them)")
        return super().unsupported_reason(cfg)

    def cell_unsupported_reason(self, cfg: Config) -> Optional[str]:
        return cuda_arch_reason(arch_capability(cfg.arch)) if cfg.arch else None

    def fingerprint(self) -> Optional[str]:
        """The build's digest of its CUDA sources and nvcc release (csrc/cuda/build_info.cu)."""
        fp = getattr(compiled._C, "CUDA_SOURCES", "") if compiled.LOAD_ERROR is None else ""
        return fp[2:] if fp.startswith("fp") else None

    def describe(self, cfg: Config, device: torch.device) -> Optional[str]:
        return cuda_design(cfg, device)


def cuda_design(cfg: Config, device: torch.device) -> str:
    """Which CUDA design the layer op runs for this configuration: "persistent (...)", or
    "per-step (<why the persistent kernel does not fit>)" (CUDABackend.describe)."""
    if not has_kernel("cuda_persistent_layout", "CUDA"):
        return "unknown (no CUDA kernels)"
    like = torch.empty(0, dtype=cfg.dtype, device=device)
    ok, why, units, blocks, smem_f, smem_b = torch.ops.fusedrnn.cuda_persistent_layout(
        like, cfg.B, cfg.H, cfg.R, cfg.proj, cfg.requires_grad)
    if ok:
        return f"persistent ({blocks} blocks x {units} units, {smem_f} / {smem_b} B shared memory)"
    return f"per-step ({why})"


BACKEND = CUDABackend()
