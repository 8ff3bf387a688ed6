"""The ``triton`` backend: the layer recurrence on Triton kernels, the LSTM's and the GRU's
(a persistent whole-sequence kernel where the grid fits the device, else one fused kernel
per step; config.py has the heuristic), the input norm (BN_x, LN_x) in plain PyTorch (the
reference's), no cell kernel."""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from ...core import schema
from ...core.contract import Backend, CellKind, Config, NormMode, RecurrenceResult
from ...core.digest import digest_tree
from ..reference import BACKEND as REFERENCE
from . import config as C
from . import host
from .host import INTERPRET
from .ops import gru_layer_forward, lstm_layer_forward

SERVED = (torch.float32, torch.bfloat16, torch.float16)


def recurrence(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, norm, design: Optional[str] = None,
               zoneout=None) -> RecurrenceResult:
    """The contract's recurrence on the Triton kernels (tests and benchmarks call it with a
    design; the backend uses the current one)."""
    cfg = Config.of(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, norm, zoneout)
    if design is None:
        return schema.run_layer_forward(lstm_layer_forward, cfg, xp, h0, c0, w_hh, w_hr, mask, lengths, norm, zoneout)
    with host.forced_design(design):
        return schema.run_layer_forward(lstm_layer_forward, cfg, xp, h0, c0, w_hh, w_hr, mask, lengths, norm, zoneout)


class TritonBackend(Backend):
    name = "triton"
    autocast_native = True  # 16-bit data, float32 cell state and accumulation
    cells = (CellKind.LSTM, CellKind.GRU)

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        device = torch.device(device)
        if device.type == "cuda":
            if INTERPRET:
                return ("TRITON_INTERPRET=1 was set when the kernels were defined: they run "
                        "on CPU tensors only")
            if not torch.cuda.is_available():
                return "no CUDA device is available"
            return None
        if device.type == "cpu":
            if INTERPRET:
                return None
            return ("the triton backend runs on CUDA tensors (on CPU tensors only through the "
                    "interpreter: TRITON_INTERPRET=1 set before triton is imported)")
        return f"the triton backend does not run on {device.type} tensors"

    def unsupported_reason(self, cfg: Config) -> Optional[str]:
        # The interpreter computes bf16 / fp16 dots wrongly (numpy has no bf16): CPU runs
        # take fp32 / fp64.  On CUDA fp64 is left to the other backends.
        served = (torch.float32, torch.float64) if INTERPRET else SERVED
        if cfg.dtype not in served:
            where = "under the Triton interpreter" if INTERPRET else "on CUDA"
            names = ", ".join(str(d).replace("torch.", "") for d in served)
            return f"the triton kernels take {names} {where}, got {str(cfg.dtype).replace('torch.', '')}"
        if cfg.cell == CellKind.GRU and cfg.norm.batch and cfg.B > C.GRU_MAX_BN_ROWS:
            return (f"the triton GRU's batch norm keeps all B rows in one program; B={cfg.B} > "
                    f"{C.GRU_MAX_BN_ROWS} spills (the compile gate's registers)")
        if cfg.norm.batch and cfg.B > C.MAX_BN_ROWS:
            return (f"recurrent batch norm keeps all B rows in one program for its per-step "
                    f"statistics; B={cfg.B} > {C.MAX_BN_ROWS}")
        return None

    def recurrence(self, cfg, xp, h0, c0, w_hh, w_hr, mask, lengths, norm, zoneout=None,
                   b_hh=None) -> RecurrenceResult:
        if cfg.cell == CellKind.GRU:
            return schema.run_gru_forward(gru_layer_forward, cfg, xp, h0, w_hh, b_hh, mask, lengths, norm, zoneout)
        return schema.run_layer_forward(lstm_layer_forward, cfg, xp, h0, c0, w_hh, w_hr, mask, lengths, norm, zoneout)

    def input_norm(self, cfg, xw, bias, lengths, bn, slots):
        return REFERENCE.input_norm(cfg, xw, bias, lengths, bn, slots)

    def cell_unsupported_reason(self, cfg: Config) -> Optional[str]:
        return "the triton backend has no cell kernel (the single step runs elsewhere)"

    def fingerprint(self) -> Optional[str]:
        return sources_fingerprint()

    def describe(self, cfg: Config, device: torch.device) -> Optional[str]:
        gru = cfg.cell == CellKind.GRU
        s = host.shape_of(cfg.B, cfg.H, cfg.R, cfg.proj, cfg.norm, cfg.dtype, gates=3 if gru else 4)
        dev = C.Device.of(device, INTERPRET)
        t = C.gru_tilings(s, dev, host.current_design())[0] if gru else host.tilings_for(device, s)[0]
        tiles = f"BB={t.BB} BH={t.BH}" + (f" BP={t.BP}" if cfg.proj else "")
        what = "GRU, " if gru else ""
        if t.design == "persistent":
            return f"persistent ({what}{t.nprog} programs, {tiles}, W {'resident' if t.resident else 'streamed'})"
        return f"per-step ({what}{tiles})"


@functools.lru_cache(maxsize=None)
def sources_fingerprint() -> str:
    """The digest of this backend's Python sources (kernels, launches, host code: what a GPU run
    executes) and the Triton release that compiles them."""
    import triton

    return digest_tree(os.path.dirname(os.path.abspath(__file__)), (".py",), f"triton {triton.__version__}")


BACKEND = TritonBackend()
