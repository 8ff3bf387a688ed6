"""Which design and which tiles run a recurrence: the resource estimate and the heuristic.

Dimension letters: T steps, B batch, H hidden, P projection, R = P or H, G = 4H.

A tiling (:class:`Tiling`) is a design with its tile sizes, warps and pipeline depth.
Designs (see kernels/): "step" (one fused launch per step; always possible) and
"persistent" (one launch for the whole sequence, a grid barrier per step).  The
heuristic, in :func:`tiling`, from resource facts (the budget in :func:`resources`):

1. Persistent needs every program co-resident: grid = (row blocks) x (column blocks)
   <= the device's multiprocessor count (one program per SM; read from the device).
2. A persistent program keeps its cell state and its addressing in registers across the
   time loop: with 8 warps, tiles of at most PERSISTENT_ELEMS elements per thread
   (BB x BH <= 512) compile without spills on sm_90 (measured by the compile gate).
   Rows per program BB = min(pow2(B), 32); batch norm needs all rows in one program
   (per-step batch statistics), so with it B <= 32.  The first hidden block BH in
   (16, 32) meeting 1. and 2. is taken.
3. Its W slices stay on chip, in registers across steps (RESIDENT), when each slice and
   the full-K operand tile of a step fit RESIDENT_BYTES; else each step streams them
   from L2 in BK chunks (still one launch).
4. Otherwise: the per-step design (BB up to 64 rows, all B <= MAX_BN_ROWS with batch
   norm; more warps for more rows).  Layer norm always takes it: a row's statistics
   span every column block, which a persistent grid could only share across two more
   grid barriers per step.
The GRU (Shape.gates == 3, no projection) follows the same rules with three gate tiles
(:func:`gru_tilings`).
In the Triton interpreter (CPU) programs run one after another, so a program that waits
on another would wait forever: there the persistent design runs with a single program
(grid = 1, tiles covering B, H and P), and the per-step design with many.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch

MAX_BN_ROWS = 256  # batch norm: all rows in one per-step program (spills beyond 128)
GRU_MAX_BN_ROWS = 128  # the GRU's: fp32 at 256 rows spills 1 KB (sm_80 / sm_90)
_PERSISTENT_BH = (16, 32)


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
    """The shape facts a tiling depends on (not T: no recompiles when T changes)."""

    B: int
    H: int
    R: int
    proj: bool
    bn: bool  # batch norm (train or eval): all rows in one program
    esize: int  # bytes per weight element
    ln: bool = False  # layer norm: per-step only (a row's statistics span every column block)
    gates: int = 4  # gate blocks of W_hh: the LSTM's 4, the GRU's 3 (no projection)


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How a design runs a shape: its tiles, warps and pipeline depths (one autotuning config)."""

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
    k_stages: int = 1  # software-pipeline depth of the streamed K loops (stream_stages)

    def tiles(self, s: Shape) -> dict:
        """Padded full-K tile sizes of the persistent kernels."""
        return dict(RP=pow2(s.R), HP=pow2(s.H), GP=pow2(s.gates * s.H), PP=pow2(s.R))


def resources(s: Shape, BB: int, BH: int, BP: int, num_warps: int) -> dict:
    """Per-program on-chip need of the persistent design, in bytes, both directions.

    w: the W slices a RESIDENT program keeps across steps (forward: 4 gate tiles [R, BH]
    of W_hh, the GRU's 3, and [H, BP] of W_hr; backward: [G, BR] of W_hh and [P, BH] of W_hr);
    operand: the full-K dot operand tile of one step ([BB, R] / [BB, H] forward,
    [BB, G] / [BB, P] backward), in the weight type; elems: elements per thread of one
    [BB, BH] tile (the cell keeps about 30 such tiles live, plus the per-program
    addressing that the time loop keeps).  Calibrated on sm_90 compiles (the compile gate,
    aot.py and benchmarks/compile_gate.py; its table benchmarks/resources.md): with 8 warps,
    2 elements per thread compile to ~250 registers without spills, 4 spill."""
    e = s.esize
    RP, HP, GP = pow2(s.R), pow2(s.H), pow2(s.gates * s.H)
    BR = BP if s.proj else BH
    w_f = max(s.gates * RP * BH * e, HP * BP * e if s.proj else 0)
    w_b = max(GP * BR * e, RP * BH * e if s.proj else 0)
    op_f = BB * max(RP, HP if s.proj else 0) * e
    op_b = BB * max(GP, RP if s.proj else 0) * e
    return dict(w=max(w_f, w_b), operand=max(op_f, op_b),
                elems=BB * max(BH, BR) // (32 * num_warps))


PERSISTENT_WARPS = 8
PERSISTENT_ELEMS = 2  # elements per thread of a [BB, BH] tile in the persistent kernels
RESIDENT_BYTES = 16 * 1024  # the largest W slice / operand tile kept in registers


def _resident_fits(s: Shape, BB: int, BH: int, BP: int) -> bool:
    r = resources(s, BB, BH, BP, PERSISTENT_WARPS)
    return r["w"] <= RESIDENT_BYTES and r["operand"] <= RESIDENT_BYTES


LN_ROWS = 16  # rows per program of layer norm's whole-row kernels (more programs per step)
LN_COLS = {"ln_fwd": 32, "ln_bwd": 64}  # columns per pass block of those kernels (the widest
LN_WARPS = 8  # without spills on sm_80 / sm_90 in the compile gate): few serial blocks per row
LN_PARTS = 32  # GEMM-block statistics ln_fwd merges per load (64 hit ptxas' register cap)


def ln_rows(tiling: Tiling) -> int:
    """Rows per program of a tiling's layer-norm row kernels (ln_fwd, ln_bwd)."""
    return min(tiling.BB, LN_ROWS)


def ln_cols(s: Shape, role: str) -> int:
    """Column block of a layer-norm row kernel ("ln_fwd" / "ln_bwd"): a program walks its
    rows' 4H gate columns and H units in blocks of this many (one program per 16 rows, so
    the walk is serial)."""
    return min(pow2(s.H), LN_COLS[role])


STREAM_BK = 64  # K chunk of the streamed GEMMs (pipelined k_stages deep: kernels.common)
STREAM_BK_BN = 32  # with batch norm: 64 spills 40-144 B (persistent bf16, per-step fp32) in the gate


def stream_chunk(s: Shape) -> int:
    """The K chunk BK of the streamed GEMMs: wider chunks, fewer serial loop trips per step
    (each trip's loads are in flight k_stages - 1 trips ahead)."""
    return min(STREAM_BK_BN if s.bn else STREAM_BK, pow2(min(s.R, s.H)))


STREAM_STAGES = 3  # the deepest pipeline of the streamed K loops
STREAM_SMEM_SHARE = 2  # its buffers may take 1 / this of a block's shared memory (the rest: reductions)


def stream_stages(s: Shape, dev: Device, BB: int, BN: int, BK: int, gates: int = 4) -> int:
    """How deep the streamed K loops of [BB, BN] tiles are pipelined: each stage holds the
    operand chunk [BB, BK] and its mask, and one W chunk [BK, BN] per gate (four; the GRU's
    three), in the weight type; as many stages (3, 2, else 1: no pipelining) as fit
    STREAM_SMEM_SHARE of the device's shared memory.  (Batch norm keeps all B rows in one
    per-step program: 3 stages of fp32 [256, 32] tiles would take ~200 KB.)"""
    per_stage = (2 * BB * BK + gates * BK * BN) * s.esize
    for st in range(STREAM_STAGES, 1, -1):
        if st * per_stage <= dev.smem_per_block // STREAM_SMEM_SHARE:
            return st
    return 1


def step_tiling(s: Shape, dev: Device) -> Tiling:
    """Per-step tiles: 16 hidden units per program, all rows (BN) or up to 64 per program;
    8 warps from 32 rows on, 16 from 128 (spill-free up to 64 rows on sm_90)."""
    BB = pow2(s.B) if s.bn else min(pow2(s.B), 64)
    BK = stream_chunk(s)
    nw = 4 if BB <= 16 else (8 if BB <= 64 else 16)
    return Tiling("step", BB=BB, BH=16, BP=16, BK=BK, num_warps=nw, num_stages=1, nb=_cdiv(s.B, BB),
                  k_stages=stream_stages(s, dev, BB, 16, BK))


def gru_tilings(s: Shape, dev: Device, design: str = "auto") -> tuple[Tiling, Tiling]:
    """The GRU's tilings, forward and backward (s.gates == 3), of a design (as :func:`tiling`):
    the persistent one for both where it runs; else the LSTM's per-step tiles (step_tiling),
    the K loops pipelined for the W chunks each streams per stage (the forward's three gates,
    the backward's one: its only streamed loop is dL/dh's W_hh GEMM; fp32 at B = 64 spills on
    sm_90 with the forward's two stages and not with three)."""
    t = tiling(s, dev, design)
    if t.design == "persistent":  # K chunks of 32: 64 spills 32-40 B in the fp32 forward (3 stages, sm_90)
        BK = min(t.BK, STREAM_BK_BN)
        t = dataclasses.replace(t, BK=BK, k_stages=stream_stages(s, dev, t.BB, t.BH, BK, s.gates))
        return t, t
    return (dataclasses.replace(t, k_stages=stream_stages(s, dev, t.BB, t.BH, t.BK, gates=3)),
            dataclasses.replace(t, k_stages=stream_stages(s, dev, t.BB, t.BH, t.BK, gates=1)))


def persistent_tiling(s: Shape, dev: Device, resident: Optional[bool] = None) -> Optional[Tiling]:
    """The persistent tiling, or None when it cannot run (see the module docstring)."""
    if s.ln:
        return None
    BK = stream_chunk(s)
    if dev.interpret:  # one program covering everything
        BB, BH, BP = pow2(s.B), pow2(s.H), pow2(s.R)
        res = True if resident is None else resident
        return Tiling("persistent", BB=BB, BH=BH, BP=BP, BK=BK, num_warps=4, resident=res,
                      k_stages=stream_stages(s, dev, BB, max(BH, BP), BK, s.gates))
    BB = pow2(s.B) if s.bn else min(pow2(s.B), 32)
    if BB * 16 > PERSISTENT_ELEMS * 32 * PERSISTENT_WARPS:
        return None  # batch norm over more rows than one persistent program holds
    nb = _cdiv(s.B, BB)
    for BH in _PERSISTENT_BH:
        ncol = _cdiv(s.H, BH)
        BP = pow2(_cdiv(s.R, ncol)) if s.proj else BH  # as many projection blocks as hidden
        nprog = nb * max(ncol, _cdiv(s.R, BP))
        if nprog > dev.sm_count:
            continue
        if resources(s, BB, BH, BP, PERSISTENT_WARPS)["elems"] > PERSISTENT_ELEMS:
            continue
        res = _resident_fits(s, BB, BH, BP) if resident is None else resident
        return Tiling("persistent", BB=BB, BH=BH, BP=BP, BK=BK, num_warps=PERSISTENT_WARPS,
                      resident=res, nb=nb, nprog=nprog, k_stages=stream_stages(s, dev, BB, max(BH, BP), BK, s.gates))
    return None


def tiling(s: Shape, dev: Device, design: str = "auto") -> Tiling:
    """The tiling of a design: "auto" (the heuristic), "step", "persistent" (resident
    when it fits), "persistent-resident" or "persistent-stream"."""
    if design == "step":
        return step_tiling(s, dev)
    force = {"persistent-resident": True, "persistent-stream": False}.get(design)
    t = persistent_tiling(s, dev, force)
    if t is not None:
        if force and not dev.interpret and not _resident_fits(s, t.BB, t.BH, t.BP):
            raise ValueError(f"the W slices of B={s.B} H={s.H} R={s.R} do not fit the "
                             f"resident budget ({RESIDENT_BYTES} bytes)")
        return t
    if design == "auto":
        return step_tiling(s, dev)
    raise ValueError(f"the persistent design cannot run B={s.B} H={s.H} R={s.R} "
                     f"(bn={s.bn}) on this device: " + persistent_limit_reason(s, dev))


def persistent_limit_reason(s: Shape, dev: Device) -> str:
    if s.ln:
        return ("layer norm runs on the per-step design (its row statistics span every column "
                "block: a persistent grid would need two more grid barriers per step)")
    rows = PERSISTENT_ELEMS * 32 * PERSISTENT_WARPS // 16
    if s.bn and s.B > rows:
        return (f"batch norm keeps all rows in one program and B={s.B} > {rows} rows "
                f"(the persistent program's register budget)")
    return (f"more than {dev.sm_count} co-resident programs would be needed "
            f"(one per multiprocessor, tiles within the register budget)")


DESIGNS = ("auto", "step", "persistent", "persistent-resident", "persistent-stream")


def candidate_tilings(s: Shape, dev: Device, design: str = "auto") -> list[Tiling]:
    """The autotuning space of the design that :func:`tiling` picks: the heuristic's tiling
    first, then the variants of tile sizes and warps that stay within the same resource rules
    (so every one of them is in the compile gate's list too).  T is not part of it."""
    first = tiling(s, dev, design)
    out = [first]
    if dev.interpret:
        return out
    if first.design == "persistent":
        rows = [first.BB] if s.bn else sorted({min(pow2(s.B), 16), first.BB})
        for BB in rows:
            for BH in _PERSISTENT_BH:
                ncol = _cdiv(s.H, BH)
                BP = pow2(_cdiv(s.R, ncol)) if s.proj else BH
                nb = _cdiv(s.B, BB)
                nprog = nb * max(ncol, _cdiv(s.R, BP))
                if nprog > dev.sm_count:
                    continue
                if resources(s, BB, BH, BP, PERSISTENT_WARPS)["elems"] > PERSISTENT_ELEMS:
                    continue
                res = first.resident and _resident_fits(s, BB, BH, BP)
                t = Tiling("persistent", BB=BB, BH=BH, BP=BP, BK=first.BK,
                           num_warps=PERSISTENT_WARPS, resident=res, nb=nb, nprog=nprog,
                           k_stages=stream_stages(s, dev, BB, max(BH, BP), first.BK, s.gates))
                if t not in out:
                    out.append(t)
    else:
        rows = [first.BB] if s.bn else sorted({min(pow2(s.B), 32), first.BB})
        for BB in rows:
            for nw in (4, 8) if BB <= 32 else ((8,) if BB <= 64 else (16,)):
                t = Tiling("step", BB=BB, BH=16, BP=16, BK=first.BK, num_warps=nw,
                           nb=_cdiv(s.B, BB), k_stages=stream_stages(s, dev, BB, 16, first.BK))
                if t not in out:
                    out.append(t)
    return out[:4]
