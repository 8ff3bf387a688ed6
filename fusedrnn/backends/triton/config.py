"""Which design and which tiles run a recurrence: the resource estimate, the heuristic, the
autotuning space and the list of every kernel configuration that can be chosen.

Dimension letters: T steps, B batch, H hidden, P projection, R = P or H, G = 4H.

Designs (see kernels.py): "step" (one fused launch per step; always possible) and
"persistent" (one launch for the whole sequence, a grid barrier per step).  The
heuristic, in :func:`plan`:

1. Persistent needs every program co-resident: grid = (row blocks) x (column blocks)
   <= the number of multiprocessors (one program per SM).  Batch norm needs all rows in
   one program (per-step batch statistics), so then row blocks = 1 and B <= MAX_BN_ROWS.
   The smallest column block BH in (16, 32, 64) that satisfies this is taken (most
   programs: the most on-chip storage and bandwidth for W).
2. Within a persistent launch, W slices stay on chip (RESIDENT) when
   :func:`resources` says the W tiles plus the operand tile of one step fit the
   per-block shared-memory limit of the device and the register estimate stays under
   the per-thread limit; else they are streamed from L2 every step (still one launch).
3. Otherwise: the per-step design.
In the Triton interpreter (CPU) programs run one after another, so a program that waits
on another would wait forever: there the persistent design runs with a single program
(grid = 1, tiles covering B, H and P), and the per-step design with many.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch

MAX_BN_ROWS = 256  # batch norm: all rows in one program (registers: 4 * BB * BH fp32)
_PERSISTENT_BH = (16, 32, 64)


def pow2(n: int, lo: int = 16) -> int:
    """The next power of two >= max(n, lo) (tl.dot needs every dimension >= 16)."""
    p = lo
    while p < n:
        p *= 2
    return p


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass(frozen=True)
class Device:
    """What the heuristic needs to know about the device."""

    sm_count: int
    smem_per_block: int  # bytes a block may use (opt-in maximum)
    regs_per_sm: int
    interpret: bool  # the Triton interpreter: persistent launches must be one program

    @staticmethod
    def of(device: torch.device, interpret: bool) -> "Device":
        if interpret or device.type != "cuda":
            return Device(sm_count=1, smem_per_block=1 << 30, regs_per_sm=1 << 30, interpret=True)
        return _cuda_device(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_device(index: int) -> Device:
    p = torch.cuda.get_device_properties(index)
    smem = getattr(p, "shared_memory_per_block_optin", 0) or 48 * 1024
    return Device(sm_count=p.multi_processor_count, smem_per_block=smem,
                  regs_per_sm=getattr(p, "regs_per_multiprocessor", 65536), interpret=False)


# Fixed targets for compile gates and documentation (H100 SXM / A100).
SM90 = Device(sm_count=132, smem_per_block=227 * 1024, regs_per_sm=65536, interpret=False)
SM80 = Device(sm_count=108, smem_per_block=163 * 1024, regs_per_sm=65536, interpret=False)


@dataclasses.dataclass(frozen=True)
class Shape:
    """The shape facts a plan depends on (not T: no recompiles when T changes)."""

    B: int
    H: int
    R: int
    proj: bool
    bn: bool  # batch norm (train or eval): all rows in one program
    esize: int  # bytes per weight element


@dataclasses.dataclass(frozen=True)
class Plan:
    design: str  # "step" | "persistent"
    BB: int  # rows per program
    BH: int  # hidden units per program
    BP: int  # projection columns per program (proj) / h columns per transfer program
    BK: int  # reduction chunk of streamed GEMMs
    num_warps: int
    num_stages: int = 1
    resident: bool = False  # persistent: W slices loaded once, before the time loop
    nb: int = 1  # row blocks
    nprog: int = 1  # persistent: programs in the grid

    def tiles(self, s: Shape) -> dict:
        """Padded full-K tile sizes of the persistent kernels."""
        return dict(RP=pow2(s.R), HP=pow2(s.H), GP=pow2(4 * s.H), PP=pow2(s.R))


def resources(s: Shape, BB: int, BH: int, BP: int, num_warps: int) -> dict:
    """Per-program on-chip need of the persistent design, in bytes, both directions.

    w: the W slices kept across steps (forward: 4 gate tiles [R, BH] of W_hh and [H, BP]
    of W_hr; backward: [G, BR] of W_hh and [P, BH] of W_hr); operand: the one-step dot
    operand tiles ([BB, R] / [BB, H] forward, [BB, G] / [BB, P] backward), cast to the
    weight type; regs: fp32 words per thread for accumulators, states and gate values
    (about 12 live [BB, BH] tiles in the backward cell).  The compiler decides where each
    tile lives; the numbers are a budget, checked against compiled kernels by the compile
    gate (kernel_configs + tests/test_triton_compile.py)."""
    e = s.esize
    RP, HP, GP = pow2(s.R), pow2(s.H), pow2(4 * s.H)
    BR = BP if s.proj else BH
    w_f = 4 * RP * BH * e + (HP * BP * e if s.proj else 0)
    w_b = GP * BR * e + (RP * BH * e if s.proj else 0)
    op_f = BB * max(RP, HP if s.proj else 0) * e
    op_b = BB * max(GP, RP if s.proj else 0) * e
    threads = 32 * num_warps
    regs = 12 * BB * max(BH, BR) // threads
    return dict(w=max(w_f, w_b), operand=max(op_f, op_b), regs=regs)


def _resident_fits(s: Shape, dev: Device, BB: int, BH: int, BP: int, num_warps: int) -> bool:
    r = resources(s, BB, BH, BP, num_warps)
    return r["w"] + r["operand"] <= dev.smem_per_block - 16 * 1024 and r["regs"] <= 96


def _warps(BB: int, BH: int) -> int:
    return 8 if BB * BH >= 4096 else 4


def step_plan(s: Shape, dev: Device) -> Plan:
    BB = pow2(s.B) if s.bn else min(pow2(s.B), 64)
    BH = 16 if s.H <= 256 else 32
    BP = 16 if s.R <= 256 else 32
    BK = 32 if s.esize >= 4 else 64
    BK = min(BK, pow2(min(s.R, s.H)))
    return Plan("step", BB=BB, BH=BH, BP=BP, BK=BK, num_warps=_warps(BB, BH), num_stages=1,
                nb=_cdiv(s.B, BB))


def persistent_plan(s: Shape, dev: Device, resident: Optional[bool] = None) -> Optional[Plan]:
    """The persistent plan, or None when it cannot run (see the module docstring)."""
    BK = 32 if s.esize >= 4 else 64
    if dev.interpret:  # one program covering everything
        BB, BH, BP = pow2(s.B), pow2(s.H), pow2(s.R)
        return Plan("persistent", BB=BB, BH=BH, BP=BP, BK=min(BK, pow2(min(s.R, s.H))),
                    num_warps=4, resident=True if resident is None else resident, nb=1, nprog=1)
    if s.bn and s.B > MAX_BN_ROWS:
        return None
    BB = pow2(s.B) if s.bn else min(pow2(s.B), 128)
    nb = _cdiv(s.B, BB)
    for BH in _PERSISTENT_BH:
        ncol = _cdiv(s.H, BH)
        BP = BH
        if s.proj:  # as many projection blocks as hidden blocks
            BP = pow2(_cdiv(s.R, ncol))
        nprog = nb * max(ncol, _cdiv(s.R, BP))
        if nprog > dev.sm_count:
            continue
        nw = _warps(BB, max(BH, BP))
        res = _resident_fits(s, dev, BB, BH, BP, nw) if resident is None else resident
        if resources(s, BB, BH, BP, nw)["regs"] > 160:
            continue
        return Plan("persistent", BB=BB, BH=BH, BP=BP, BK=min(BK, pow2(min(s.R, s.H))),
                    num_warps=nw, resident=res, nb=nb, nprog=nprog)
    return None


def plan(s: Shape, dev: Device, design: str = "auto") -> Plan:
    """The plan for a design: "auto" (the heuristic), "step", "persistent" (resident
    when it fits), "persistent-resident" or "persistent-stream"."""
    if design == "step":
        return step_plan(s, dev)
    force = {"persistent-resident": True, "persistent-stream": False}.get(design)
    p = persistent_plan(s, dev, force)
    if p is not None:
        return p
    if design == "auto":
        return step_plan(s, dev)
    raise ValueError(f"the persistent design cannot run B={s.B} H={s.H} R={s.R} "
                     f"(bn={s.bn}) on this device: " + persistent_limit_reason(s, dev))


def persistent_limit_reason(s: Shape, dev: Device) -> str:
    if s.bn and s.B > MAX_BN_ROWS:
        return f"batch norm keeps all rows in one program and B={s.B} > {MAX_BN_ROWS}"
    return (f"more than {dev.sm_count} co-resident programs would be needed "
            f"(hidden blocks of up to {_PERSISTENT_BH[-1]} units)")


DESIGNS = ("auto", "step", "persistent", "persistent-resident", "persistent-stream")
