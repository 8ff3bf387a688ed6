"""What a tiling launches: the kernels, their constexprs and their grids.

One function of (tiling, shape, flags) serves both the launches (:mod:`.host`) and the
ahead-of-time compile check (:mod:`.aot`), so the check compiles exactly what runs.

Dimension letters: B batch, H hidden, R = P or H, G = 4H.

Roles: persistent tilings launch ``fwd`` (and ``bwd``); per-step tilings launch ``fwd`` every
step, ``fwd_proj`` after it with proj_size, and backward ``bwd`` every step, ``transfer``
(proj_size, every step) and ``transfer_final`` once.  With layer norm (per-step only) the
forward step is ``fwd`` (the GEMM) then ``ln_fwd`` (whole rows), and the backward step
``transfer`` then ``ln_bwd``.  The GRU's per-step tilings launch ``gru_fwd`` every step, and
backward ``gru_bwd`` every step and ``gru_final`` once; with layer norm ``gru_ln_fwd`` after each
``gru_fwd`` and ``gru_ln_bwd`` after each ``gru_bwd``.  Its persistent tilings launch ``gru_fwd``
(and ``gru_bwd``) once.
"""

from __future__ import annotations

from typing import NamedTuple

import triton

from ...core.contract import MaskMode, NormMode
from . import config as C
from .kernels import gru, layer_norm, persistent, step
from .kernels.common import ZoneoutMode

ROLES = {  # design -> role -> kernel: the one map from roles to kernels
    "persistent": {"fwd": persistent.fwd_persistent_kernel, "bwd": persistent.bwd_persistent_kernel,
                   "gru_fwd": gru.fwd_gru_persistent_kernel, "gru_bwd": gru.bwd_gru_persistent_kernel},
    "step": {"fwd": step.fwd_step_kernel, "fwd_proj": step.fwd_proj_kernel, "bwd": step.bwd_step_kernel,
             "transfer": step.bwd_transfer_kernel, "transfer_final": step.bwd_transfer_kernel,
             "ln_fwd": layer_norm.fwd_ln_kernel, "ln_bwd": layer_norm.bwd_ln_kernel,
             "gru_fwd": gru.fwd_gru_kernel, "gru_bwd": gru.bwd_gru_kernel, "gru_final": gru.gru_final_kernel,
             "gru_ln_fwd": gru.gru_ln_fwd_kernel, "gru_ln_bwd": gru.gru_ln_bwd_kernel},
}
# constexprs that are tile sizes (what autotuning varies); the rest are flags
TILE_KEYS = ("RESIDENT", "BB", "BH", "BP", "BR", "BK", "KST", "RP", "HP", "GP", "PP", "BG", "NP")


def flags(mask_mode: MaskMode, lengths: bool, reverse: bool, norm_mode: NormMode, proj: bool, save: bool,
          prec: str, zoneout: ZoneoutMode = ZoneoutMode.NONE) -> dict:
    """The option constexprs of every kernel: MASK and BN the contract's mask_mode and
    norm_mode (MaskMode; NormMode, batch or layer norm), ZO how zoneout is read (ZoneoutMode),
    the three as plain ints; PREC the tl.dot input precision ("ieee", or "tf32" for fp32 with
    TF32)."""
    return dict(MASK=int(mask_mode), HAS_LEN=bool(lengths), REVERSE=bool(reverse), BN=int(norm_mode),
                PROJ=bool(proj), SAVE=bool(save), ZO=int(zoneout), PREC=prec)


def tiles(tiling: C.Tiling, s: C.Shape) -> dict:
    """The tile constexprs of a tiling (BR: the h columns of a transfer program; KST: the
    pipeline depth of the streamed K loops)."""
    t = dict(BB=tiling.BB, BH=tiling.BH, BP=tiling.BP, BR=tiling.BP, BK=tiling.BK, KST=tiling.k_stages)
    if tiling.design == "persistent":
        t.update(RESIDENT=tiling.resident, **tiling.tiles(s))
    return t


class Launch(NamedTuple):
    role: str
    kernel: object  # the @triton.jit function
    flags: dict  # the option constexprs it takes
    tiles: dict  # the tile constexprs it takes
    num_warps: int
    num_stages: int

    @property
    def constexprs(self) -> dict:
        return {**self.flags, **self.tiles}


def _take(kernel, consts: dict) -> dict:
    names = set(kernel.arg_names)
    return {k: v for k, v in consts.items() if k in names}


def launch(tiling: C.Tiling, s: C.Shape, f: dict, role: str) -> Launch:
    """The launch of one role of a tiling for shape s with option flags f."""
    kernel = ROLES[tiling.design][role]
    extra = {"FINAL": role == "transfer_final"} if role.startswith("transfer") else {}
    t = tiles(tiling, s)
    warps = tiling.num_warps
    if role.endswith(("ln_fwd", "ln_bwd")):  # whole-row programs: their own rows, column blocks and warps
        # BG: the GEMM programs' hidden block (their partial statistics), NP: partials per load
        t.update(BB=C.ln_rows(tiling), BH=C.ln_cols(s, role[-6:]), BG=tiling.BH,
                 NP=min(C.pow2(triton.cdiv(s.H, tiling.BH), 2), C.LN_PARTS))
        warps = C.LN_WARPS
    return Launch(role, kernel, _take(kernel, {**f, **extra}),
                  _take(kernel, {k: v for k, v in t.items() if k in TILE_KEYS}), warps, tiling.num_stages)


def launches(tiling: C.Tiling, s: C.Shape, f: dict) -> list[Launch]:
    """Every launch a tiling makes for shape s (backward roles only with f["SAVE"])."""
    if tiling.design == "persistent":
        roles = ["fwd"] + (["bwd"] if f["SAVE"] else [])
    elif f["BN"] == NormMode.LAYER:
        roles = ["fwd", "ln_fwd"] + (["fwd_proj"] if s.proj else [])
        if f["SAVE"]:
            roles += ["transfer", "ln_bwd", "transfer_final"]
    else:
        roles = ["fwd"] + (["fwd_proj"] if s.proj else [])
        if f["SAVE"]:
            roles += ["bwd"] + (["transfer"] if s.proj else []) + ["transfer_final"]
    return [launch(tiling, s, f, r) for r in roles]


def gru_launches(tilings: tuple, s: C.Shape, f: dict) -> list[Launch]:
    """Every launch of the GRU for shape s with its (forward, backward) tilings
    (config.gru_tilings; backward roles only with f["SAVE"]); f has the GRU's HAS_BIAS beside
    the flags()."""
    if tilings[0].design == "persistent":
        return [launch(tilings[0], s, f, "gru_fwd")] + ([launch(tilings[1], s, f, "gru_bwd")] if f["SAVE"] else [])
    layer = f["BN"] == NormMode.LAYER
    out = [launch(tilings[0], s, f, r) for r in ["gru_fwd"] + (["gru_ln_fwd"] if layer else [])]
    if f["SAVE"]:
        out += [launch(tilings[1], s, f, r) for r in ["gru_bwd"] + (["gru_ln_bwd"] if layer else []) + ["gru_final"]]
    return out


def grid(role: str, design: str, B: int, H: int, R: int, t: dict) -> tuple:
    """The launch grid of a role, from the tile constexprs (a function of them, so that
    autotuning, which varies the tiles, gets the grid of each candidate tiling)."""
    if design == "persistent":  # one program per (row block, column block); the GRU's take no BP (R = H)
        return (triton.cdiv(B, t["BB"]) * max(triton.cdiv(H, t["BH"]), triton.cdiv(R, t.get("BP", t["BH"]))),)
    if role.endswith(("ln_fwd", "ln_bwd")):  # whole rows
        return (triton.cdiv(B, t["BB"]),)
    if role in ("fwd", "bwd") or role.startswith("gru"):
        return (triton.cdiv(H, t["BH"]), triton.cdiv(B, t["BB"]))
    return (triton.cdiv(R, t.get("BP", t.get("BR"))), triton.cdiv(B, t["BB"]))


__all__ = ["Launch", "ROLES", "TILE_KEYS", "flags", "grid", "gru_launches", "launch", "launches", "tiles"]
