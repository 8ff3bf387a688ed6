"""The layer recurrence op on Triton kernels: host functions -> registration -> backend.

Dimension letters: T steps, B batch, H hidden, P projection, R = P or H, G = 4H.

Ops (torch.library.triton_op, so torch.compile traces into the kernels; a plain custom_op
under the Triton interpreter, whose kernels cannot run on fake tensors):

  fusedrnn_triton::lstm_forward  -> y, h_n, c_n, stats_h, stats_c, and the workspace
                                    saved for backward (hs, cs, act, hhat, hc)
  fusedrnn_triton::lstm_backward -> dxp, dh0, dc0, dW_hh, dW_hr, dgamma_h, dgamma_c, dbeta_c

Both take tensors and plain scalars only.  The weight gradients are GEMMs after the
backward loop: dW_hh = sum_s dhh_s^T (h_{s-1} m_s), dW_hr = sum_s dhn_s^T hc_s.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import triton
from torch import Tensor

from ..base import Backend, BatchStats, Config, RecurrenceResult
from . import config as C
from . import kernels as K

INTERPRET = not isinstance(K.fwd_step_kernel, triton.runtime.JITFunction)
_DESIGN_CODES = {name: i for i, name in enumerate(C.DESIGNS)}

# "auto" unless FUSEDRNN_TRITON_DESIGN names one of C.DESIGNS (tests and benchmarks).
DESIGN = os.environ.get("FUSEDRNN_TRITON_DESIGN", "auto").strip() or "auto"


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prec(dtype: torch.dtype, tf32: bool) -> str:
    return "tf32" if (dtype == torch.float32 and tf32 and not INTERPRET) else "ieee"


def _launch(kernel, grid, *args, **kwargs):
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def _shape(B: int, H: int, R: int, proj: bool, bn: bool, dtype: torch.dtype) -> C.Shape:
    return C.Shape(B=B, H=H, R=R, proj=proj, bn=bn, esize=dtype.itemsize)


def _plans(device: torch.device, B: int, H: int, w_hh: Tensor, proj: bool, bn: bool,
           design: int) -> list[C.Plan]:
    """The plan the heuristic picks, then the rest of its autotuning space (config.py).
    Forward and backward derive the same plans from (B, H, R = w_hh.shape[1])."""
    s = _shape(B, H, w_hh.shape[1], proj, bn, w_hh.dtype)
    return C.candidates(s, C.Device.of(device, INTERPRET), C.DESIGNS[design])


# Autotuning (CUDA, eager): FUSEDRNN_TRITON_AUTOTUNE=0 turns it off (the heuristic's plan), and so
# does torch.use_deterministic_algorithms(True).
AUTOTUNE = os.environ.get("FUSEDRNN_TRITON_AUTOTUNE", "1").strip() != "0"
_FLAG_KEYS = ["B", "H", "R", "MASK", "HAS_LEN", "REVERSE", "BN", "PROJ", "SAVE", "PREC"]
_TUNERS: dict = {}


def _tile_consts(p: C.Plan) -> dict:
    if p.design == "persistent":
        return dict(RESIDENT=p.resident, BB=p.BB, BH=p.BH, BP=p.BP, BK=p.BK)
    return dict(BB=p.BB, BH=p.BH, BK=p.BK)


def _check_coresident(plans: list[C.Plan], grid, device: torch.device) -> None:
    """A persistent launch whose programs cannot all be resident at once would spin
    forever at its first grid barrier (in the interpreter: more than one program)."""
    limit = C.Device.of(device, INTERPRET).sm_count
    for p in plans:
        n = grid(_tile_consts(p))[0]
        if n > limit:
            raise RuntimeError(f"fusedrnn triton: a persistent launch of {n} programs exceeds "
                               f"the {limit} that can be co-resident ({p})")


def _run(kernel, plans: list[C.Plan], grid, args: tuple, kwargs: dict, tune: bool,
         restore: tuple = ()):
    """Launch kernel with the first plan's tiles, or autotune over all plans (the tiles
    and warps of the plans are the configs; sequence length is not part of the key, so
    a new T neither re-tunes nor recompiles).  grid: a function of the tile constants."""
    if plans[0].design == "persistent":
        _check_coresident(plans, grid, args[0].device)
    if tune and len(plans) > 1:
        key = (kernel.__name__, tuple(plans))
        tuner = _TUNERS.get(key)
        if tuner is None:
            configs = [triton.Config(_tile_consts(p), num_warps=p.num_warps,
                                     num_stages=p.num_stages) for p in plans]
            tuner = triton.autotune(configs=configs, key=_FLAG_KEYS,
                                    restore_value=list(restore))(kernel)
            _TUNERS[key] = tuner
        _launch(tuner, grid, *args, **kwargs)
    else:
        p = plans[0]
        c = _tile_consts(p)
        _launch(kernel, grid(c), *args, **kwargs, **c, num_warps=p.num_warps,
                num_stages=p.num_stages)


def _tuning(t: Tensor) -> bool:
    """Autotune only eagerly on real CUDA tensors (not while torch.compile traces), and not
    under torch.use_deterministic_algorithms(True): a timing-dependent tile choice could
    change the rounding between runs, the heuristic's plan cannot."""
    return (AUTOTUNE and not INTERPRET and type(t) is torch.Tensor and t.is_cuda
            and not torch.are_deterministic_algorithms_enabled())


def _nprog(B: int, H: int, R: int, c: dict) -> int:
    """Programs of a persistent launch: row blocks x column blocks (hidden or projection)."""
    return triton.cdiv(B, c["BB"]) * max(triton.cdiv(H, c["BH"]), triton.cdiv(R, c["BP"]))


def _or(t: Optional[Tensor], dummy: Tensor) -> Tensor:
    return dummy if t is None else t.contiguous()


# ---- host functions ---------------------------------------------------------------------


def device_guard(t: Tensor):
    """A context that makes t's device current: Triton launches on the current device, which
    need not be the tensors' (inputs on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def forward(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
             mask: Optional[Tensor], lengths: Optional[Tensor], bn_wh: Optional[Tensor],
             bn_wc: Optional[Tensor], bn_bc: Optional[Tensor], rm_h: Optional[Tensor],
             rv_h: Optional[Tensor], rm_c: Optional[Tensor], rv_c: Optional[Tensor],
             reverse: bool, bn_mode: int, bn_offset: int, bn_eps: float, save: bool, design: int,
             tf32: bool) -> tuple[Tensor, ...]:
    T, B, G = xp.shape
    H, R = G // 4, w_hh.shape[1]
    proj = w_hr is not None
    dev, acc = xp.device, _acc(xp.dtype)
    xp, w_hh = xp.contiguous(), w_hh.contiguous()
    NS = T + 1 if save else 2
    NSC = max(T, 1) if save else 1
    hs = torch.empty(NS, B, R, device=dev, dtype=acc)
    cs = torch.empty(NS, B, H, device=dev, dtype=acc)
    hs[0].copy_(h0)
    cs[0].copy_(c0)
    y = torch.empty(T, B, R, device=dev, dtype=xp.dtype)
    e = lambda *shape: torch.empty(*shape, device=dev, dtype=acc)  # noqa: E731
    act = e(T, B, G) if save else e(0)
    hhat = e(T, B, G) if save and bn_mode else e(0)
    hc = e(NSC, B, H) if proj else e(0)
    stats_h = e(T, 2, G) if bn_mode == 1 else e(0)
    stats_c = e(T, 2, H) if bn_mode == 1 else e(0)
    if T > 0:
        plans = _plans(dev, B, H, w_hh, proj, bn_mode != 0, design)
        p, tune = plans[0], _tuning(xp)
        dummy = e(1)
        ws = [_or(t, dummy) for t in (act, hhat, stats_h, stats_c)]
        bnt = [_or(t, dummy) for t in (bn_wh, bn_wc, bn_bc, rm_h, rv_h, rm_c, rv_c)]
        msk = _or(mask, dummy)
        lens = _or(lengths, torch.zeros(1, device=dev, dtype=torch.int64))
        hcw = _or(hc if proj else None, dummy)
        bn_S = rm_h.shape[0] if bn_mode == 2 else 1
        flags = dict(MASK=0 if mask is None else mask.dim() - 1, HAS_LEN=lengths is not None,
                     REVERSE=bool(reverse), BN=bn_mode, PROJ=proj, SAVE=save,
                     PREC=_prec(xp.dtype, tf32))
        if p.design == "persistent":
            bar = torch.zeros(2, device=dev, dtype=torch.int32)
            _run(K.fwd_persistent_kernel, plans, lambda c: (_nprog(B, H, R, c),),
                 (xp, w_hh, _or(w_hr, w_hh), msk, lens, hs, cs, y, hcw, *ws, *bnt, bar, T, B, H, R,
                  NS, NSC, bn_offset, bn_S, bn_eps),
                 dict(flags, RP=C.pow2(R), HP=C.pow2(H)), tune, restore=("hs", "cs"))
        else:
            grid_p = (triton.cdiv(R, p.BP), p.nb)
            for s in range(T):
                _run(K.fwd_step_kernel, plans,
                     lambda c: (triton.cdiv(H, c["BH"]), triton.cdiv(B, c["BB"])),
                     (xp, w_hh, msk, lens, hs, cs, y, hcw, *ws, *bnt, s, T, B, H, R, NS, NSC,
                      bn_offset, bn_S, bn_eps), flags, tune)
                if proj:
                    _launch(K.fwd_proj_kernel, grid_p, w_hr.contiguous(), lens, hs, y, hcw, s, T,
                            B, H, R, NS, NSC, HAS_LEN=flags["HAS_LEN"], REVERSE=flags["REVERSE"],
                            PREC=flags["PREC"], BB=p.BB, BP=p.BP, BK=p.BK,
                            num_warps=p.num_warps, num_stages=p.num_stages)
    h_n = hs[T % NS].to(h0.dtype, copy=True)
    c_n = cs[T % NS].to(c0.dtype, copy=True)
    if not save:  # nothing for backward: hand back no workspace
        hs, cs = e(0), e(0)
    return y, h_n, c_n, stats_h, stats_c, hs, cs, act, hhat, hc


def backward(dy: Tensor, dh_n: Tensor, dc_n: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
             mask: Optional[Tensor], lengths: Optional[Tensor], bn_wh: Optional[Tensor],
             bn_wc: Optional[Tensor], bn_bc: Optional[Tensor], rv_h: Optional[Tensor],
             rm_c: Optional[Tensor], rv_c: Optional[Tensor], stats_h: Tensor, stats_c: Tensor,
             hs: Tensor, cs: Tensor, act: Tensor, hhat: Tensor, hc: Tensor, reverse: bool,
             bn_mode: int, bn_offset: int, bn_eps: float, design: int,
             tf32: bool) -> tuple[Tensor, ...]:
    T, B, R = dy.shape
    G = w_hh.shape[0]
    H = G // 4
    proj = w_hr is not None
    dev, acc = dy.device, act.dtype
    dy, dh_n, dc_n, w_hh = dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), w_hh.contiguous()
    e = lambda *shape: torch.empty(*shape, device=dev, dtype=acc)  # noqa: E731
    dxp = torch.empty(T, B, G, device=dev, dtype=dy.dtype)
    dh0 = torch.empty(B, R, device=dev, dtype=dh_n.dtype)
    dc0 = torch.empty(B, H, device=dev, dtype=dc_n.dtype)
    dhh = e(T, B, G)
    dhn = e(T, B, R) if proj else e(0)
    dg_h = e(T, G) if bn_mode else e(0)
    dg_c = e(T, H) if bn_mode else e(0)
    db_c = e(T, H) if bn_mode else e(0)
    plans = _plans(dev, B, H, w_hh, proj, bn_mode != 0, design) if T > 0 else None
    p, tune = (plans[0] if plans else None), _tuning(dy)
    dummy = e(1)
    msk = _or(mask, dummy)
    lens = _or(lengths, torch.zeros(1, device=dev, dtype=torch.int64))
    w_r = _or(w_hr, w_hh)
    bnt = [_or(t, dummy) for t in (bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c)]
    ws = [_or(t, dummy) for t in (stats_h, stats_c)]
    dhn_w, dgs = _or(dhn if proj else None, dummy), [_or(t, dummy) for t in (dg_h, dg_c, db_c)]
    bn_S = rv_h.shape[0] if bn_mode == 2 else 1
    flags = dict(MASK=0 if mask is None else mask.dim() - 1, HAS_LEN=lengths is not None,
                 REVERSE=bool(reverse), PREC=_prec(dy.dtype, tf32))
    if T == 0:
        dh0.copy_(dh_n)
        dc0.copy_(dc_n)
    elif p.design == "persistent":
        bar = torch.zeros(2, device=dev, dtype=torch.int32)
        _run(K.bwd_persistent_kernel, plans, lambda c: (_nprog(B, H, R, c),),
             (dy, dh_n, dc_n, w_hh, w_r, msk, lens, cs, act, _or(hhat if bn_mode else None, dummy),
              *ws, *bnt, dxp, dhh, dhn_w, dh0, dc0, *dgs, bar, T, B, H, R, bn_offset, bn_S, bn_eps),
             dict(flags, BN=bn_mode, PROJ=proj, GP=C.pow2(G), PP=C.pow2(R)), tune)
    else:
        dh_buf, dc_buf = e(2, B, R), e(2, B, H)
        grid_r = (triton.cdiv(R, p.BP), p.nb)
        for s in range(T - 1, -1, -1):
            if proj:
                _launch(K.bwd_transfer_kernel, grid_r, dy, dh_n, w_hh, msk, lens, dhh, dh_buf,
                        dhn_w, dh0, s, T, B, H, R, **flags, FINAL=False, BB=p.BB, BR=p.BP,
                        BK=p.BK, num_warps=p.num_warps, num_stages=p.num_stages)
            _run(K.bwd_step_kernel, plans,
                 lambda c: (triton.cdiv(H, c["BH"]), triton.cdiv(B, c["BB"])),
                 (dy, dh_n, dc_n, w_hh, w_r, msk, lens, cs, act,
                  _or(hhat if bn_mode else None, dummy), *ws, *bnt, dxp, dhh, dhn_w, dh_buf,
                  dc_buf, *dgs, s, T, B, H, R, bn_offset, bn_S, bn_eps),
                 dict(flags, BN=bn_mode, PROJ=proj), tune)
        _launch(K.bwd_transfer_kernel, grid_r, dy, dh_n, w_hh, msk, lens, dhh, dh_buf, dhn_w, dh0,
                -1, T, B, H, R, **flags, FINAL=True, BB=p.BB, BR=p.BP, BK=p.BK,
                num_warps=p.num_warps, num_stages=p.num_stages)
        dc0.copy_(dc_buf[0])
    # Weight gradients: one GEMM each over all steps and rows (finished rows have zero dhh / dhn).
    hm = hs[:T]
    if mask is not None:
        hm = hm * mask.to(acc)
    dw_hh = torch.matmul(dhh.reshape(T * B, G).t(), hm.reshape(T * B, R)).to(w_hh.dtype)
    if proj:
        dw_hr = torch.matmul(dhn.reshape(T * B, R).t(), hc[:T].reshape(T * B, H)).to(w_hr.dtype)
    else:
        dw_hr = e(0)
    if bn_mode:
        dg_h = dg_h.sum(0).to(bn_wh.dtype)
        dg_c = dg_c.sum(0).to(bn_wc.dtype)
        db_c = db_c.sum(0).to(bn_bc.dtype)
    return dxp, dh0, dc0, dw_hh, dw_hr, dg_h, dg_c, db_c


# ---- registration -------------------------------------------------------------------------

# Under the interpreter the kernels run only on real CPU tensors: register a plain custom op
# (opaque to torch.compile) instead of a triton_op (which torch.compile decomposes into its
# kernels, traced on fake tensors).
_define = torch.library.custom_op if INTERPRET else torch.library.triton_op


@_define("fusedrnn_triton::lstm_forward", mutates_args=())
def lstm_forward(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                 mask: Optional[Tensor], lengths: Optional[Tensor], bn_wh: Optional[Tensor],
                 bn_wc: Optional[Tensor], bn_bc: Optional[Tensor], rm_h: Optional[Tensor],
                 rv_h: Optional[Tensor], rm_c: Optional[Tensor], rv_c: Optional[Tensor],
                 reverse: bool, bn_mode: int, bn_offset: int, bn_eps: float, save: bool,
                 design: int, tf32: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                   Tensor, Tensor, Tensor, Tensor]:
    with device_guard(xp):
        return forward(xp, h0, c0, w_hh, w_hr, mask, lengths, bn_wh, bn_wc, bn_bc, rm_h, rv_h, rm_c,
                       rv_c, reverse, bn_mode, bn_offset, bn_eps, save, design, tf32)


@_define("fusedrnn_triton::lstm_backward", mutates_args=())
def lstm_backward(dy: Tensor, dh_n: Tensor, dc_n: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                  mask: Optional[Tensor], lengths: Optional[Tensor], bn_wh: Optional[Tensor],
                  bn_wc: Optional[Tensor], bn_bc: Optional[Tensor], rv_h: Optional[Tensor],
                  rm_c: Optional[Tensor], rv_c: Optional[Tensor], stats_h: Tensor,
                  stats_c: Tensor, hs: Tensor, cs: Tensor, act: Tensor, hhat: Tensor, hc: Tensor,
                  reverse: bool, bn_mode: int, bn_offset: int, bn_eps: float, design: int,
                  tf32: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                       Tensor]:
    with device_guard(dy):
        return backward(dy, dh_n, dc_n, w_hh, w_hr, mask, lengths, bn_wh, bn_wc, bn_bc, rv_h, rm_c,
                        rv_c, stats_h, stats_c, hs, cs, act, hhat, hc, reverse, bn_mode, bn_offset,
                        bn_eps, design, tf32)


@lstm_forward.register_fake
def _forward_fake(xp, h0, c0, w_hh, w_hr, mask, lengths, bn_wh, bn_wc, bn_bc, rm_h, rv_h, rm_c,
                  rv_c, reverse, bn_mode, bn_offset, bn_eps, save, design, tf32):
    T, B, G = xp.shape
    H, R = G // 4, w_hh.shape[1]
    acc = _acc(xp.dtype)
    e = lambda *shape: xp.new_empty(*shape, dtype=acc)  # noqa: E731
    NS = T + 1
    return (xp.new_empty(T, B, R), h0.new_empty(B, R), c0.new_empty(B, H),
            e(T, 2, G) if bn_mode == 1 else e(0), e(T, 2, H) if bn_mode == 1 else e(0),
            e(NS, B, R) if save else e(0), e(NS, B, H) if save else e(0),
            e(T, B, G) if save else e(0), e(T, B, G) if save and bn_mode else e(0),
            e(max(T, 1) if save else 1, B, H) if w_hr is not None else e(0))


@lstm_backward.register_fake
def _backward_fake(dy, dh_n, dc_n, w_hh, w_hr, mask, lengths, bn_wh, bn_wc, bn_bc, rv_h, rm_c,
                   rv_c, stats_h, stats_c, hs, cs, act, hhat, hc, reverse, bn_mode, bn_offset,
                   bn_eps, design, tf32):
    T, B, R = dy.shape
    G = w_hh.shape[0]
    H = G // 4
    acc = act.dtype
    bn = bn_mode != 0
    return (dy.new_empty(T, B, G), dh_n.new_empty(B, R), dc_n.new_empty(B, H),
            w_hh.new_empty(G, R),
            w_hr.new_empty(w_hr.shape) if w_hr is not None else dy.new_empty(0, dtype=acc),
            bn_wh.new_empty(G) if bn else dy.new_empty(0, dtype=acc),
            bn_wc.new_empty(H) if bn else dy.new_empty(0, dtype=acc),
            bn_bc.new_empty(H) if bn else dy.new_empty(0, dtype=acc))


def _setup_context(ctx, inputs, output):
    (xp, h0, c0, w_hh, w_hr, mask, lengths, bn_wh, bn_wc, bn_bc, rm_h, rv_h, rm_c, rv_c, reverse,
     bn_mode, bn_offset, bn_eps, save, design, tf32) = inputs
    y, h_n, c_n, stats_h, stats_c, hs, cs, act, hhat, hc = output
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(stats_h, stats_c, hs, cs, act, hhat, hc)
    ctx.save_for_backward(w_hh, w_hr, mask, lengths, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c,
                          stats_h, stats_c, hs, cs, act, hhat, hc)
    ctx.flags = (reverse, bn_mode, bn_offset, bn_eps, save, design, tf32)
    ctx.meta = (y.shape, y.dtype, h_n.shape, h_n.dtype, c_n.shape, c_n.dtype)


def _backward(ctx, dy, dh_n, dc_n, *_workspace_grads):
    (w_hh, w_hr, mask, lengths, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, stats_h, stats_c, hs, cs,
     act, hhat, hc) = ctx.saved_tensors
    reverse, bn_mode, bn_offset, bn_eps, save, design, tf32 = ctx.flags
    if not save:
        raise RuntimeError("fusedrnn: the triton lstm_forward ran without saving for backward "
                           "(no input required grad), so it cannot be differentiated")
    y_shape, y_dtype, h_shape, h_dtype, c_shape, c_dtype = ctx.meta
    dev = hs.device
    dy = torch.zeros(y_shape, dtype=y_dtype, device=dev) if dy is None else dy
    dh_n = torch.zeros(h_shape, dtype=h_dtype, device=dev) if dh_n is None else dh_n
    dc_n = torch.zeros(c_shape, dtype=c_dtype, device=dev) if dc_n is None else dc_n
    dxp, dh0, dc0, dw_hh, dw_hr, dg_h, dg_c, db_c = lstm_backward(
        dy, dh_n, dc_n, w_hh, w_hr, mask, lengths, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, stats_h,
        stats_c, hs, cs, act, hhat, hc, reverse, bn_mode, bn_offset, bn_eps, design, tf32)
    bn = bn_mode != 0
    return (dxp, dh0, dc0, dw_hh, dw_hr if w_hr is not None else None, None, None,
            dg_h if bn else None, dg_c if bn else None, db_c if bn else None,
            None, None, None, None, None, None, None, None, None, None, None)


lstm_forward.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fusedrnn: the triton backward op is not differentiable (no double "
                       "backward); use backend='reference' for higher-order gradients")


lstm_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


# ---- the backend ---------------------------------------------------------------------------

_SERVED = (torch.float32, torch.bfloat16, torch.float16)


def recurrence(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn, design: str = None) -> RecurrenceResult:
    """The contract's recurrence (see fusedrnn.backends.base) on the Triton kernels."""
    design = DESIGN if design is None else design
    if design not in _DESIGN_CODES:
        raise ValueError(f"FUSEDRNN_TRITON_DESIGN / design must be one of {C.DESIGNS}, got {design!r}")
    needs_grad = Config.of(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn).requires_grad
    bn_mode = 0 if bn is None else (1 if bn.training else 2)
    if bn is not None:
        run = (None,) * 4 if bn.training else (bn.running_mean_h, bn.running_var_h,
                                               bn.running_mean_c, bn.running_var_c)
        bn_args = (bn.weight_h, bn.weight_c, bn.bias_c) + run
        scal = (bn.step_offset, float(bn.eps))
    else:
        bn_args = (None,) * 7
        scal = (0, 1e-5)
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    y, h_n, c_n, stats_h, stats_c, *_ = lstm_forward(
        xp, h0, c0, w_hh, w_hr, mask, lengths, *bn_args, bool(reverse), bn_mode, scal[0], scal[1],
        needs_grad, _DESIGN_CODES[design], tf32)
    stats = None
    if bn_mode == 1:
        stats = BatchStats(stats_h[:, 0], stats_h[:, 1], stats_c[:, 0], stats_c[:, 1])
    return RecurrenceResult(y, h_n, c_n, stats)


class TritonBackend(Backend):
    """Triton kernels: a persistent whole-sequence kernel where the grid fits the device,
    else one fused kernel per step (config.py has the heuristic)."""

    name = "triton"

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
        served = (torch.float32, torch.float64) if INTERPRET else _SERVED
        if cfg.dtype not in served:
            where = "under the Triton interpreter" if INTERPRET else "on CUDA"
            names = ", ".join(str(d).replace("torch.", "") for d in served)
            return f"the triton kernels take {names} {where}, got {str(cfg.dtype).replace('torch.', '')}"
        if cfg.bn is not None and cfg.B > C.MAX_BN_ROWS:
            return (f"recurrent batch norm keeps all B rows in one program for its per-step "
                    f"statistics; B={cfg.B} > {C.MAX_BN_ROWS}")
        return None

    def recurrence(self, xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn) -> RecurrenceResult:
        return recurrence(xp, h0, c0, w_hh, w_hr, mask, lengths, reverse, bn)

    def cell_unsupported_reason(self, cfg: Config) -> Optional[str]:
        return "the triton backend has no cell kernel (the single step runs elsewhere)"


BACKEND = TritonBackend()
