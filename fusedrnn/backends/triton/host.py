"""Host functions of the Triton layer ops: buffers, tilings and launches, forward and backward.

Dimension letters: T steps, B batch, H hidden, P projection, R = P or H, G = 4H.

The arguments and the workspace are the layer-op schema's (:mod:`fusedrnn.core.schema`).
The forward exchanges h through hs [T + 1, B, R] (hs[0] = h0; in the model's dtype: a 16-bit
exchange for bf16 / fp16) and keeps c in cs [T + 1, B, H] (the accumulation dtype), which
is ws_c; ws_h is hs[:T] * m; ws_hh_hat holds N_h's x_hat (layer norm: each step's raw
W_hh h m first, normalised in place).  The weight gradients are GEMMs after the backward
loop: dW_hh = sum_s dhh_s^T (h_{s-1} m_s) (in the model's dtype, fp32 accumulation, as
cuDNN), dW_hr = sum_s dhn_s^T hc_s.

Design ("auto" unless FUSEDRNN_DESIGN, the one design switch of both GPU backends, or
:func:`forced_design` names one of config.DESIGNS) and TF32 (torch.backends.cuda.matmul.allow_tf32) are read when a launch's
tiling is chosen; under torch.compile, when the graph is traced.  Persistent grids launch
cooperatively in eager mode (COOPERATIVE).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import triton
from torch import Tensor

from ...core.contract import MaskMode, NormMode, acc_dtype
from . import config as C
from . import launch as L
from .kernels.common import ZoneoutMode

# TRITON_INTERPRET=1 when the kernels were defined: they are Python functions, run on CPU tensors
INTERPRET = not isinstance(L.ROLES["step"]["fwd"], triton.runtime.JITFunction)
DESIGN_ENV = "FUSEDRNN_DESIGN"  # read by the CUDA backend too (csrc/cuda/layer_host.cpp)
# forced_design's stack: process-wide, not a context variable, because autograd runs the
# backward of CUDA tensors on its own device thread, where the caller's context variables
# (torch < 2.13) are not set: a forced design must reach the backward too.
_forced: list[tuple[object, str]] = []

# Autotuning (CUDA, eager): FUSEDRNN_TRITON_AUTOTUNE=0 turns it off (the heuristic's tiling), and so
# does torch.use_deterministic_algorithms(True).
AUTOTUNE = os.environ.get("FUSEDRNN_TRITON_AUTOTUNE", "1").strip() != "0"
_KEY = ["B", "H", "R", "MASK", "HAS_LEN", "REVERSE", "BN", "PROJ", "SAVE", "PREC"]
_TUNERS: dict = {}


@contextlib.contextmanager
def forced_design(design: str):
    """Run every launch inside the block on this design (one of config.DESIGNS), in every
    thread (the backward too, which autograd may run on another thread): a test and benchmark
    switch, like FUSEDRNN_DESIGN, not for concurrent use with different designs."""
    if design not in C.DESIGNS:
        raise ValueError(f"design must be one of {C.DESIGNS}, got {design!r}")
    entry = (object(), design)  # this block's own entry: overlapping blocks remove their own
    _forced.append(entry)
    try:
        yield
    finally:
        _forced.remove(entry)


def _env_design() -> str:
    return os.environ.get(DESIGN_ENV, "auto").strip() or "auto"


def current_design() -> str:
    """The design of the launches planned now: the innermost forced_design, else FUSEDRNN_DESIGN."""
    d = _forced[-1][1] if _forced else _env_design()
    if d not in C.DESIGNS:
        raise ValueError(f"{DESIGN_ENV} / design must be one of {C.DESIGNS}, got {d!r}")
    return d


def zoneout_operands(zc: Optional[Tensor], zh: Optional[Tensor],
                     dummy: Tensor) -> tuple[Tensor, Tensor, ZoneoutMode]:
    """(zc, zh, ZO): the zoneout weights as the kernels read them.  Training weights [T, B, H]
    / [T, B, R] go contiguous (WEIGHTS); the eval rates, expanded views of one value each
    (every stride 0), go as those values (RATE: read once per tile, no [T, B, *] memory).
    A GRU has no cell state: zc None (the dummy in its place)."""
    if zh is None:
        return dummy, dummy, ZoneoutMode.NONE
    given = [t for t in (zc, zh) if t is not None]
    if all(st == 0 for t in given for st in t.stride()):
        return (dummy if zc is None else zc), zh, ZoneoutMode.RATE
    return (dummy if zc is None else zc.contiguous()), zh.contiguous(), ZoneoutMode.WEIGHTS


def eager_cuda(t: Tensor) -> bool:
    """A real CUDA tensor in eager mode: not a FakeTensor or a subclass, not while torch.compile
    / export traces (what launch-time choices such as autotuning and cooperative launches need)."""
    return type(t) is torch.Tensor and t.is_cuda and not torch.compiler.is_compiling()


def device_guard(t: Tensor):
    """A context that makes t's device current: Triton launches on the current device, which
    need not be the tensors' (inputs on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def shape_of(B: int, H: int, R: int, proj: bool, norm_mode: NormMode, dtype: torch.dtype, gates: int = 4) -> C.Shape:
    """The tiling's shape facts; norm_mode is the contract's NormMode (batch or layer norm);
    gates 4 for the LSTM, 3 for the GRU."""
    norm = NormMode(norm_mode)
    return C.Shape(B=B, H=H, R=R, proj=proj, bn=norm.batch, esize=dtype.itemsize, ln=norm == NormMode.LAYER,
                   gates=gates)


def tilings_for(device: torch.device, s: C.Shape) -> list[C.Tiling]:
    """The tiling the heuristic picks for the current design, then the rest of its autotuning
    space (config.py).  Forward and backward derive the same tilings from the same shape."""
    return C.candidate_tilings(s, C.Device.of(device, INTERPRET), current_design())


def _prec(dtype: torch.dtype) -> str:
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    return "tf32" if (dtype == torch.float32 and tf32 and not INTERPRET) else "ieee"


def _tuning(t: Tensor) -> bool:
    """Autotune only eagerly on real CUDA tensors (not while torch.compile traces), and not
    under torch.use_deterministic_algorithms(True): a timing-dependent tile choice could
    change the rounding between runs, the heuristic's tiling cannot."""
    return AUTOTUNE and not INTERPRET and eager_cuda(t) and not torch.are_deterministic_algorithms_enabled()


def _check_coresident(tilings: list[C.Tiling], s: C.Shape, device: torch.device) -> None:
    """A persistent launch whose programs cannot all be resident at once would spin forever
    at its first grid barrier (in the interpreter: more than one program).  Each program
    takes one SM at most (8 warps: any register count fits one per SM), so the grid must not
    exceed the SM count; what other work occupies is the cooperative launch's to see."""
    limit = C.Device.of(device, INTERPRET).sm_count
    for t in tilings:
        n = L.grid("fwd", t.design, s.B, s.H, s.R, L.tiles(t, s))[0]
        if n > limit:
            raise RuntimeError(f"fusedrnn triton: a persistent launch of {n} programs exceeds "
                               f"the {limit} that can be co-resident ({t})")


def _has_cooperative_launch() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_cooperative_grid" in getattr(CUDAOptions, "__dataclass_fields__", {})


# Persistent grids launch cooperatively where the installed Triton can (3.3 and later): the
# driver then places every program at once or refuses the launch (an error, not a hang), also
# when other kernels hold SMs.  Eager launches only: under torch.compile the grid goes through
# inductor, and the co-residency check above is the guard.
COOPERATIVE = _has_cooperative_launch()


def _launch_options(design: str, t: Tensor) -> dict:
    """Extra launch options of a design's kernels: the cooperative launch of a persistent grid
    (real CUDA tensors, eager)."""
    if design == "persistent" and COOPERATIVE and not INTERPRET and eager_cuda(t):
        return {"launch_cooperative_grid": True}
    return {}


def _run(role: str, tilings: list[C.Tiling], s: C.Shape, f: dict, args: tuple, tune: bool, restore: tuple = ()):
    """Launch ``role`` with the first tiling, or autotune over all tilings (their tiles and
    warps are the configs; the sequence length is not part of the key, so a new T neither
    re-tunes nor recompiles)."""
    design = tilings[0].design
    if design == "persistent":
        _check_coresident(tilings, s, args[0].device)
    first = L.launch(tilings[0], s, f, role)
    extra = _launch_options(design, args[0])

    def grid(meta):
        return L.grid(role, design, s.B, s.H, s.R, meta)

    def call(kernel):  # eager cooperative launches go to the kernel itself (wrap_triton would trace them)
        return kernel if extra else torch.library.wrap_triton(kernel)

    if tune and len(tilings) > 1:
        key = (first.kernel.__name__, role, tuple(tilings))
        tuner = _TUNERS.get(key)
        if tuner is None:
            configs = [triton.Config(L.launch(t, s, f, role).tiles, num_warps=t.num_warps, num_stages=t.num_stages)
                       for t in tilings]
            tuner = triton.autotune(configs=configs, key=[k for k in _KEY if k in first.kernel.arg_names],
                                    restore_value=list(restore))(first.kernel)
            _TUNERS[key] = tuner
        call(tuner)[grid](*args, **first.flags, **extra)
    else:
        call(first.kernel)[grid(first.tiles)](
            *args, **first.constexprs, num_warps=first.num_warps, num_stages=first.num_stages, **extra)


def _or(t: Optional[Tensor], dummy: Tensor) -> Tensor:
    return dummy if t is None else t.contiguous()


def _saves(save_workspace: int) -> bool:
    """The ops' save_workspace: 0 or 1 (these kernels keep ws_hh_hat: no recompute mode)."""
    if save_workspace not in (0, 1):
        raise RuntimeError("fusedrnn_triton: save_workspace must be 0 or 1 (the Triton kernels keep N_h's x_hat; "
                           f"the recompute mode, 2, is the CPU kernel's), got {save_workspace}")
    return bool(save_workspace)


def forward(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], mask: Optional[Tensor],
            mask_mode: int, lengths: Optional[Tensor], reverse: bool, norm_mode: int, norm_h_weight: Optional[Tensor],
            norm_c_weight: Optional[Tensor], norm_c_bias: Optional[Tensor], bn_h_running_mean: Optional[Tensor],
            bn_h_running_var: Optional[Tensor], bn_c_running_mean: Optional[Tensor],
            bn_c_running_var: Optional[Tensor], bn_step_offset: int, norm_eps: float,
            zoneout_c: Optional[Tensor], zoneout_h: Optional[Tensor], save_workspace: int) -> tuple[Tensor, ...]:
    T, B, G = xp.shape
    H, R = G // 4, w_hh.shape[1]
    proj = w_hr is not None
    save = _saves(save_workspace)
    norm = NormMode(norm_mode)
    dev, acc = xp.device, acc_dtype(xp.dtype)
    xp, w_hh = xp.contiguous(), w_hh.contiguous()
    NS = T + 1 if save else 2
    NSC = max(T, 1) if save else 1
    hs = torch.empty(NS, B, R, device=dev, dtype=xp.dtype)  # the model's dtype: a 16-bit h exchange
    cs = torch.empty(NS, B, H, device=dev, dtype=acc)
    hs[0].copy_(h0)
    cs[0].copy_(c0)
    y = torch.empty(T, B, R, device=dev, dtype=xp.dtype)
    e = lambda *shape: torch.empty(*shape, device=dev, dtype=acc)  # noqa: E731
    layer = norm == NormMode.LAYER  # per-row statistics; hhat is also the raw W_hh h ring
    act = e(T, B, G) if save else e(0)
    hhat = e(NSC if layer else T, B, G) if (save or layer) and norm != NormMode.NONE else e(0)
    hc = e(NSC, B, H) if proj else e(0)
    # the statistics of each step: batch norm's batch statistics in training, layer norm's per row
    stats_T = T if norm in (NormMode.BATCH_TRAIN, NormMode.LAYER) else 0
    stats_h = e(stats_T, 2, B if layer else G)
    stats_c = e(stats_T, 2, B if layer else H)
    if T > 0:
        s = shape_of(B, H, R, proj, norm, w_hh.dtype)
        tilings = tilings_for(dev, s)
        dummy = e(1)
        zc, zh, zo = zoneout_operands(zoneout_c, zoneout_h, dummy)
        f = L.flags(MaskMode(mask_mode), lengths is not None, reverse, norm, proj, save, _prec(xp.dtype), zo)
        # layer norm: each GEMM program's per-row (mean, M2) of the step, merged by ln_fwd
        ln_part = e(triton.cdiv(H, tilings[0].BH), 2, B) if layer else dummy
        tune = _tuning(xp)
        ws = [_or(t if t.numel() else None, dummy) for t in (act, hhat, stats_h, stats_c)]
        bnt = [_or(t, dummy) for t in (norm_h_weight, norm_c_weight, norm_c_bias, bn_h_running_mean, bn_h_running_var,
                                       bn_c_running_mean, bn_c_running_var)]
        msk = _or(mask, dummy)
        lens = _or(lengths, torch.zeros(1, device=dev, dtype=torch.int64))
        hcw = _or(hc if proj else None, dummy)
        bn_S = bn_h_running_mean.shape[0] if norm == NormMode.BATCH_EVAL else 1
        if tilings[0].design == "persistent":
            bar = torch.zeros(2, device=dev, dtype=torch.int32)
            _run("fwd", tilings, s, f, (xp, w_hh, _or(w_hr, w_hh), msk, lens, hs, cs, y, hcw, *ws, *bnt, zc, zh, bar,
                                        T, B, H, R, NS, NSC, bn_step_offset, bn_S, norm_eps), tune,
                 restore=("hs", "cs"))
        else:
            for step in range(T):
                _run("fwd", tilings, s, f, (xp, w_hh, msk, lens, hs, cs, y, hcw, *ws, *bnt, zc, zh, ln_part, step, T,
                                            B, H, R, NS, NSC, bn_step_offset, bn_S, norm_eps), tune and not layer)
                if layer:
                    _run("ln_fwd", tilings[:1], s, f, (xp, lens, hs, cs, y, hcw, *ws, *bnt[:3], zc, zh, ln_part, step,
                                                       T, B, H, R, NS, NSC, norm_eps), False)
                if proj:
                    _run("fwd_proj", tilings[:1], s, f, (w_hr.contiguous(), lens, hs, y, hcw, zh, step, T, B, H, R,
                                                         NS, NSC), False)
    h_n = hs[T % NS].to(h0.dtype, copy=True)
    c_n = cs[T % NS].to(c0.dtype, copy=True)
    if not save:  # nothing for backward: hand back no workspace
        return y, h_n, c_n, stats_h, stats_c, e(0), act, e(0), e(0), hc
    # ws_h: the operand of W_hh at each step, h_{s-1} * m_s, as the kernels' GEMMs saw it (the
    # model's dtype); the dW_hh GEMM of backward reads it
    ws_h = hs[:T] if mask is None else hs[:T] * mask
    return y, h_n, c_n, stats_h, stats_c, ws_h, act, cs, hhat, hc


def _mm_acc(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for a weight gradient (a reduction over T * B rows): 16-bit operands on CUDA give
    an fp32 result (mm.dtype), so that no partial sum is kept in 16 bits whatever torch's
    reduced-precision-reduction setting; else torch.mm."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b)


def backward(dy: Tensor, dh_n: Tensor, dc_n: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], mask: Optional[Tensor],
             mask_mode: int, lengths: Optional[Tensor], reverse: bool, norm_mode: int,
             norm_h_weight: Optional[Tensor], norm_c_weight: Optional[Tensor], norm_c_bias: Optional[Tensor],
             bn_h_running_mean: Optional[Tensor], bn_h_running_var: Optional[Tensor],
             bn_c_running_mean: Optional[Tensor], bn_c_running_var: Optional[Tensor], bn_step_offset: int,
             norm_eps: float, zoneout_c: Optional[Tensor], zoneout_h: Optional[Tensor], h_stats: Tensor,
             c_stats: Tensor, ws_h: Tensor, ws_act: Tensor, ws_c: Tensor, ws_hh_hat: Tensor,
             ws_hc: Tensor) -> tuple[Tensor, ...]:
    T, B, R = dy.shape
    G = w_hh.shape[0]
    H = G // 4
    proj = w_hr is not None
    norm = NormMode(norm_mode)
    cs, act = ws_c, ws_act
    dev, acc = dy.device, act.dtype
    dy, dh_n, dc_n, w_hh = dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), w_hh.contiguous()
    e = lambda *shape: torch.empty(*shape, device=dev, dtype=acc)  # noqa: E731
    dxp = torch.empty(T, B, G, device=dev, dtype=dy.dtype)
    dh0 = torch.empty(B, R, device=dev, dtype=dh_n.dtype)
    dc0 = torch.empty(B, H, device=dev, dtype=dc_n.dtype)
    layer = norm == NormMode.LAYER
    s = shape_of(B, H, R, proj, norm, w_hh.dtype)
    tilings = tilings_for(dev, s) if T > 0 else None
    # per-step parameter-gradient rows: one per step (batch norm: one program holds every row),
    # with layer norm one per step and row block (summed below)
    nrow = T * (triton.cdiv(B, C.ln_rows(tilings[0])) if layer else 1) if T > 0 else 0
    # dL/d(W_hh h m) in the model's dtype (a 16-bit exchange and dW_hh GEMM for bf16 / fp16, as
    # cuDNN); layer norm keeps it in acc (bwd_ln_kernel rewrites it in place)
    dhh = e(T, B, G) if layer else torch.empty(T, B, G, device=dev, dtype=dy.dtype)
    dhn = e(T, B, R) if (proj or layer) else e(0)
    normed = norm != NormMode.NONE
    dg_h = e(nrow, G) if normed else e(0)
    dg_c = e(nrow, H) if normed else e(0)
    db_c = e(nrow, H) if normed else e(0)
    dummy = e(1)
    zc, zh, zo = zoneout_operands(zoneout_c, zoneout_h, dummy)
    f = L.flags(MaskMode(mask_mode), lengths is not None, reverse, norm, proj, True, _prec(dy.dtype), zo)
    tune = _tuning(dy)
    msk = _or(mask, dummy)
    lens = _or(lengths, torch.zeros(1, device=dev, dtype=torch.int64))
    w_r = _or(w_hr, w_hh)
    bnt = [_or(t, dummy) for t in (norm_h_weight, norm_c_weight, norm_c_bias, bn_h_running_var, bn_c_running_mean,
                                   bn_c_running_var)]
    ws = [_or(t if t.numel() else None, dummy) for t in (h_stats, c_stats)]
    dhn_w, dgs = _or(dhn if (proj or layer) else None, dummy), [_or(t, dummy) for t in (dg_h, dg_c, db_c)]
    hhat = _or(ws_hh_hat if normed else None, dummy)
    bn_S = bn_h_running_var.shape[0] if norm == NormMode.BATCH_EVAL else 1
    if T == 0:
        dh0.copy_(dh_n)
        dc0.copy_(dc_n)
    elif tilings[0].design == "persistent":
        bar = torch.zeros(2, device=dev, dtype=torch.int32)
        _run("bwd", tilings, s, f, (dy, dh_n, dc_n, w_hh, w_r, msk, lens, cs, act, hhat, *ws, *bnt, zc, zh, dxp, dhh,
                                    dhn_w, dh0, dc0, *dgs, bar, T, B, H, R, bn_step_offset, bn_S, norm_eps), tune)
    else:
        dh_buf, dc_buf = e(2, B, R), e(2, B, H)
        for step in range(T - 1, -1, -1):
            if proj or layer:
                _run("transfer", tilings[:1], s, f, (dy, dh_n, w_hh, msk, lens, zh, dhh, dh_buf, dhn_w, dh0, step, T,
                                                     B, H, R), False)
            if layer:
                _run("ln_bwd", tilings[:1], s, f, (dc_n, w_r, lens, cs, act, hhat, *ws, *bnt[:3], zc, dxp, dhh, dhn_w,
                                                   dc_buf, *dgs, step, T, B, H, R, norm_eps), False)
            else:
                _run("bwd", tilings, s, f, (dy, dh_n, dc_n, w_hh, w_r, msk, lens, cs, act, hhat, *ws, *bnt, zc, zh, dxp,
                                            dhh, dhn_w, dh_buf, dc_buf, *dgs, step, T, B, H, R, bn_step_offset, bn_S,
                                            norm_eps), tune)
        _run("transfer_final", tilings[:1], s, f, (dy, dh_n, w_hh, msk, lens, zh, dhh, dh_buf, dhn_w, dh0, -1, T, B,
                                                   H, R), False)
        dc0.copy_(dc_buf[0])
    # Weight gradients: one GEMM each over all steps and rows (finished rows have zero dhh / dhn),
    # on the W_hh operand the forward saved (ws_h)
    hm = ws_h
    dw_hh = _mm_acc(dhh.reshape(T * B, G).t(), hm.reshape(T * B, R).to(dhh.dtype)).to(w_hh.dtype)
    dw_hr = _mm_acc(dhn.reshape(T * B, R).t(), ws_hc[:T].reshape(T * B, H)).to(w_hr.dtype) if proj else e(0)
    if normed:
        dg_h = dg_h.sum(0).to(norm_h_weight.dtype)
        dg_c = dg_c.sum(0).to(norm_c_weight.dtype)
        db_c = db_c.sum(0).to(norm_c_bias.dtype)
    return dxp, dh0, dc0, dw_hh, dw_hr, dg_h, dg_c, db_c


# ---- the GRU (kernels/gru.py: per-step and persistent designs) -------------------------------
#
# The schema's GRU ops (fusedrnn.core.schema GRU_PARAMS).  hs [T + 1, B, H] is ws_hs (the model's
# dtype, as the LSTM's h exchange); ws_h is empty (the backward forms hs[:T] * m); ws_gates
# [T, B, 3H], ws_hn [T, B, H] (g_n) and ws_hh_hat [T, B, 3H] (N_h's x_hat) in the accumulation
# dtype.  No autotuning: the design is the current one (the heuristic's by default, as the
# LSTM's).  Layer norm: per-step, two launches per step each way (kernels/gru.py).


def _gru_setup(B: int, H: int, norm_mode: int, dtype: torch.dtype, dev: torch.device, mask_mode: int,
               lengths: Optional[Tensor], reverse: bool, save: bool, zo: ZoneoutMode, bias: bool):
    s = shape_of(B, H, H, False, norm_mode, dtype, gates=3)
    fwd, bwd = C.gru_tilings(s, C.Device.of(dev, INTERPRET), current_design())
    f = L.flags(MaskMode(mask_mode), lengths is not None, reverse, NormMode(norm_mode), False, save, _prec(dtype), zo)
    f["HAS_BIAS"] = bias
    return s, ([fwd], [bwd]), f


def gru_forward(xp: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], mask: Optional[Tensor], mask_mode: int,
                lengths: Optional[Tensor], reverse: bool, norm_mode: int, norm_h_weight: Optional[Tensor],
                bn_h_running_mean: Optional[Tensor], bn_h_running_var: Optional[Tensor], bn_step_offset: int,
                norm_eps: float, zoneout_h: Optional[Tensor], save_workspace: int) -> tuple[Tensor, ...]:
    T, B, G = xp.shape
    H = G // 3
    save, norm = _saves(save_workspace), NormMode(norm_mode)
    dev, acc = xp.device, acc_dtype(xp.dtype)
    xp, w_hh = xp.contiguous(), w_hh.contiguous()
    e = lambda *shape: torch.empty(*shape, device=dev, dtype=acc)  # noqa: E731
    NS = T + 1 if save else 2
    hs = torch.empty(NS, B, H, device=dev, dtype=xp.dtype)
    hs[0].copy_(h0)
    y = torch.empty(T, B, H, device=dev, dtype=xp.dtype)
    layer = norm == NormMode.LAYER
    NSC = max(T, 1) if save else 1
    gates, gn = (e(T, B, G), e(T, B, H)) if save else (e(0), e(0))
    # N_h's x_hat for backward; layer norm: also each step's raw GEMM (a ring of one without save)
    hhat = e(NSC, B, G) if (save and norm != NormMode.NONE) or layer else e(0)
    stats_h = e(T if norm in (NormMode.BATCH_TRAIN, NormMode.LAYER) else 0, 2, B if layer else G)
    if T > 0:
        dummy = e(1)
        _, zh, zo = zoneout_operands(None, zoneout_h, dummy)
        s, tilings, f = _gru_setup(B, H, norm_mode, w_hh.dtype, dev, mask_mode, lengths, reverse, save, zo,
                                   b_hh is not None)
        lens = _or(lengths, torch.zeros(1, device=dev, dtype=torch.int64))
        params = [_or(b_hh, dummy), _or(mask, dummy)]
        ws = [_or(t if t.numel() else None, dummy) for t in (gates, gn, hhat, stats_h)]
        bnt = [_or(t, dummy) for t in (norm_h_weight, bn_h_running_mean, bn_h_running_var)]
        bn_S = bn_h_running_mean.shape[0] if norm == NormMode.BATCH_EVAL else 1
        ln_part = e(triton.cdiv(H, tilings[0][0].BH), 2, B) if layer else dummy
        if tilings[0][0].design == "persistent":
            bar = torch.zeros(2, device=dev, dtype=torch.int32)
            _run("gru_fwd", tilings[0], s, f, (xp, w_hh, *params, lens, hs, y, *ws, *bnt, zh, bar, T, B, H, NS,
                                               bn_step_offset, bn_S, norm_eps), False)
        else:
            for step in range(T):
                _run("gru_fwd", tilings[0], s, f, (xp, w_hh, *params, lens, hs, y, *ws, *bnt, zh, ln_part, step, T, B,
                                                   H, NS, NSC, bn_step_offset, bn_S, norm_eps), False)
                if layer:
                    _run("gru_ln_fwd", tilings[0], s, f, (xp, params[0], lens, hs, y, *ws, bnt[0], zh, ln_part, step,
                                                          T, B, H, NS, NSC, norm_eps), False)
    h_n = hs[T % NS].to(h0.dtype, copy=True)
    # ws_h stays empty: the backward forms h_{s-1} * m_s from ws_hs and the mask (an output may
    # not alias another, and hs[:T] is what ws_h would hold without a mask)
    return y, h_n, stats_h, e(0), gates, hs if save else e(0), hhat if save else e(0), gn


def gru_backward(dy: Tensor, dh_n: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], mask: Optional[Tensor],
                 mask_mode: int, lengths: Optional[Tensor], reverse: bool, norm_mode: int,
                 norm_h_weight: Optional[Tensor], bn_h_running_mean: Optional[Tensor],
                 bn_h_running_var: Optional[Tensor], bn_step_offset: int, norm_eps: float,
                 zoneout_h: Optional[Tensor], h_stats: Tensor, ws_h: Tensor, ws_gates: Tensor, ws_hs: Tensor,
                 ws_hh_hat: Tensor, ws_hn: Tensor) -> tuple[Tensor, ...]:
    T, B, H = dy.shape
    G = 3 * H
    norm = NormMode(norm_mode)
    dev, acc = dy.device, ws_gates.dtype
    dy, dh_n, w_hh = dy.contiguous(), dh_n.contiguous(), w_hh.contiguous()
    e = lambda *shape: torch.empty(*shape, device=dev, dtype=acc)  # noqa: E731
    dxp = torch.empty(T, B, G, device=dev, dtype=dy.dtype)
    dh0 = torch.empty(B, H, device=dev, dtype=dh_n.dtype)
    layer = norm == NormMode.LAYER
    # the model's dtype (as the LSTM's); layer norm keeps it in acc (gru_ln_bwd rewrites it in place)
    dhh = e(T, B, G) if layer else torch.empty(T, B, G, device=dev, dtype=dy.dtype)
    dummy = e(1)
    _, zh, zo = zoneout_operands(None, zoneout_h, dummy)
    # no tiling at T == 0 (a forced design that cannot run the shape raises only where it would launch)
    s, tilings, f = _gru_setup(B, H, norm_mode, w_hh.dtype, dev, mask_mode, lengths, reverse, True, zo,
                               b_hh is not None) if T > 0 else (None, None, None)
    nrb = triton.cdiv(B, tilings[1][0].BB) if T > 0 else 0
    ln_rb = triton.cdiv(B, C.ln_rows(tilings[1][0])) if T > 0 else 0
    dg_h = e(T * ln_rb if layer else T, G) if norm != NormMode.NONE else e(0)
    db_part = e(T * nrb, G) if b_hh is not None else e(0)
    if T == 0:
        dh0.copy_(dh_n)
    else:
        msk = _or(mask, dummy)
        lens = _or(lengths, torch.zeros(1, device=dev, dtype=torch.int64))
        bnt = [_or(t, dummy) for t in (norm_h_weight, bn_h_running_var)]
        normed = norm != NormMode.NONE
        hhat, stats = _or(ws_hh_hat if normed else None, dummy), _or(h_stats if h_stats.numel() else None, dummy)
        dgs = _or(dg_h if normed else None, dummy)
        dbp = _or(db_part if b_hh is not None else None, dummy)
        bn_S = bn_h_running_var.shape[0] if norm == NormMode.BATCH_EVAL else 1
        if tilings[1][0].design == "persistent":
            bar = torch.zeros(2, device=dev, dtype=torch.int32)
            _run("gru_bwd", tilings[1], s, f, (dy, dh_n, w_hh, msk, lens, ws_hs, ws_gates, ws_hn, hhat, stats, bnt[0],
                                               bnt[1], zh, dxp, dhh, dgs, dbp, dh0, bar, T, B, H, bn_step_offset,
                                               bn_S, norm_eps), False)
        else:
            dh_buf, dz_buf = e(2, B, H), e(2, B, H)
            for step in range(T - 1, -1, -1):
                _run("gru_bwd", tilings[1], s, f, (dy, dh_n, w_hh, msk, lens, ws_hs, ws_gates, ws_hn, hhat, stats,
                                                   bnt[0], bnt[1], zh, dxp, dhh, dh_buf, dz_buf, dgs, dbp, step, T, B,
                                                   H, bn_step_offset, bn_S, norm_eps), False)
                if layer:
                    _run("gru_ln_bwd", tilings[1], s, f, (lens, hhat, stats, bnt[0], dhh, dgs, step, T, B, H), False)
            _run("gru_final", tilings[1], s, f, (dh_n, w_hh, msk, lens, zh, dhh, dh_buf, dz_buf, dh0, T, B, H),
                 False)
    hm = ws_hs[:T] if mask is None else ws_hs[:T] * mask
    dw_hh = _mm_acc(dhh.reshape(T * B, G).t(), hm.reshape(T * B, H).to(dhh.dtype)).to(w_hh.dtype)
    db = db_part.sum(0).to(b_hh.dtype) if b_hh is not None else e(0)
    dg = dg_h.sum(0).to(norm_h_weight.dtype) if norm != NormMode.NONE else e(0)
    return dxp, dh0, dw_hh, db, dg


__all__ = ["AUTOTUNE", "COOPERATIVE", "DESIGN_ENV", "INTERPRET", "backward", "current_design", "device_guard",
           "forced_design", "forward", "gru_backward", "gru_forward", "shape_of", "tilings_for"]
