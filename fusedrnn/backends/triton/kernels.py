"""Triton kernels of the layer recurrence op (forward and backward over a whole sequence).

Dimension letters: T steps, B batch, H hidden, P projection (proj_size), R = P or H (the
width of h), G = 4H gate columns in the order i, f, g, o.  s is the processing step; t the
time position a row reads / writes at step s (t = s, or L_b - 1 - s in reverse).

Two designs share the per-step arithmetic (the ``*_cell`` helpers):

- per-step (``fwd_step_kernel``, ``fwd_proj_kernel``, ``bwd_step_kernel``,
  ``bwd_transfer_kernel``): the host loops over steps and launches one fused kernel per
  step (two with proj_size); kernel boundaries synchronise.  Grid: (column blocks, row
  blocks).  Works for every shape and runs multi-program in the interpreter.
- persistent (``fwd_persistent_kernel``, ``bwd_persistent_kernel``): one launch runs the
  whole time loop; program p owns a block of hidden units (and of projection columns) for
  a block of rows (all rows with batch norm, so batch statistics stay in one program),
  keeps its W_hh / W_hr slices on chip across steps (RESIDENT) or streams them from L2,
  keeps c (and, backward, dh / dc) in registers, and exchanges h through global memory
  with one grid barrier per step (two with proj_size).

Buffers (fp32, or fp64 for fp64 inputs; "ACC"), except hs and dhh:
  hs [NS, B, R]  h states: hs[0] = h0, hs[s + 1] = h after step s (NS = T + 1 when the
                 forward saves for backward, else 2 used as a ring).  In the model's dtype:
                 bf16 / fp16 models exchange h between programs in 16 bits (it is the
                 W_hh GEMM's operand, rounded to that dtype anyway)
  cs [NS, B, H]  c states, the same way
  hc [NSC, B, H] o * tanh(c_hat) before the projection (proj_size only)
  act [T, B, G]  gate activations i, f, g, o (saved for backward)
  hhat [T, B, G] BN_h normalised W_hh h (batch norm, saved for backward)
  stats_h [T, 2, G], stats_c [T, 2, H]: per-step batch mean / biased variance (BN train)
  dhh [T, B, G]  gradient wrt W_hh h_{s-1} m_s (zero on finished rows): the dW_hh GEMM input
                 and the next step's W_hh^T GEMM operand; in the model's dtype (16 bits for
                 bf16 / fp16 models) except with layer norm (ACC: bwd_ln_kernel rewrites it)
  dhn [T, B, P]  gradient wrt the projected h (proj_size): the dW_hr GEMM input
  dg_h [T, G], dg_c [T, H], db_c [T, H]: per-step batch-norm parameter gradients
Constexpr flags: MASK 0 none / 1 shared [B, R] / 2 per step [T, B, R]; BN 0 none / 1 train
/ 2 eval; PREC the tl.dot input precision for fp32 ("ieee" or "tf32").
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._helpers import (
    bn_backward,
    bn_saved_stats,
    bn_stats,
    gates_stream,
    grid_reset,
    grid_sync,
    load_a,
    load_pos,
    load_tile,
    load_w,
    load_zone,
    mm_stream,
    persistent_program,
    project,
    row_lengths,
    row_step,
    sigmoid,
    step_offset,
    step_operands,
    step_program,
    store_gates,
    store_pos,
    store_tile,
    tanh,
    zone_mix,
)

# Runtime integers that change with the sequence, never specialised on (no recompiles).
_DNS = ["s", "T", "NS", "NSC", "bn_off", "bn_S"]


# ---- the per-step arithmetic ----------------------------------------------------------


@triton.jit
def _bn_h_fwd(v, a2, n, col, vc, s, slot, G, stats_h, bn_wh, rm_h, rv_h, eps, BN: tl.constexpr):
    """BN_h of one gate block: returns (x_hat, gamma * x_hat)."""
    mean, var = bn_stats(v, a2, n, col, vc, s, slot, G, stats_h, rm_h, rv_h, BN)
    rstd = 1.0 / tl.sqrt(var + eps)
    xh = (v - mean[None, :]) * rstd[None, :]
    gamma = tl.load(bn_wh + col, mask=vc, other=0.0).to(v.dtype)
    return xh, xh * gamma[None, :]


@triton.jit
def fwd_cell(a_i, a_f, a_g, a_o, c_prev, xp, s, t, active, offs_b, vb, offs_j, vj, B, H, slot,
             eps, act_ws, hhat_ws, stats_h, stats_c, bn_wh, bn_wc, bn_bc, rm_h, rv_h, rm_c, rv_c,
             BN: tl.constexpr, SAVE: tl.constexpr):
    """Gates, BN_h, state update, BN_c of one step for hidden units offs_j.

    a_* [BB, BH]: the gate blocks of (h_{s-1} m_s) W_hh^T; c_prev [BB, BH].
    Returns (o * tanh(BN_c(c_new)), c_new)."""
    G = 4 * H
    a2 = active[:, None]
    m2 = vb[:, None] & vj[None, :]
    rows = offs_b[:, None] * G + offs_j[None, :]
    n = tl.maximum(tl.sum(active.to(a_i.dtype), axis=0), 1.0)
    if BN != 0:
        x_i, a_i = _bn_h_fwd(a_i, a2, n, offs_j, vj, s, slot, G, stats_h, bn_wh, rm_h, rv_h, eps, BN)
        x_f, a_f = _bn_h_fwd(a_f, a2, n, H + offs_j, vj, s, slot, G, stats_h, bn_wh, rm_h, rv_h,
                             eps, BN)
        x_g, a_g = _bn_h_fwd(a_g, a2, n, 2 * H + offs_j, vj, s, slot, G, stats_h, bn_wh, rm_h,
                             rv_h, eps, BN)
        x_o, a_o = _bn_h_fwd(a_o, a2, n, 3 * H + offs_j, vj, s, slot, G, stats_h, bn_wh, rm_h,
                             rv_h, eps, BN)
        if SAVE:
            store_gates(hhat_ws + step_offset(s, B, G) + rows, H, m2, x_i, x_f, x_g, x_o)
    xr = xp + t[:, None].to(tl.int64) * B * G + rows
    i = sigmoid(a_i + tl.load(xr, mask=m2, other=0.0).to(a_i.dtype))
    f = sigmoid(a_f + tl.load(xr + H, mask=m2, other=0.0).to(a_i.dtype))
    g = tanh(a_g + tl.load(xr + 2 * H, mask=m2, other=0.0).to(a_i.dtype))
    o = sigmoid(a_o + tl.load(xr + 3 * H, mask=m2, other=0.0).to(a_i.dtype))
    if SAVE:
        store_gates(act_ws + step_offset(s, B, G) + rows, H, m2, i, f, g, o)
    c_new = f * c_prev + i * g
    c_hat = c_new
    if BN != 0:
        mean, var = bn_stats(c_new, a2, n, offs_j, vj, s, slot, H, stats_c, rm_c, rv_c, BN)
        rstd = 1.0 / tl.sqrt(var + eps)
        gamma = tl.load(bn_wc + offs_j, mask=vj, other=0.0).to(c_new.dtype)
        beta = tl.load(bn_bc + offs_j, mask=vj, other=0.0).to(c_new.dtype)
        c_hat = (c_new - mean[None, :]) * (rstd * gamma)[None, :] + beta[None, :]
    return o * tanh(c_hat), c_new


@triton.jit
def emit_h(h_new, h_prev, hs, y, zh, s, t, a2, offs_b, vb, offs_n, vn, B, W, NS, ZO: tl.constexpr):
    """A step's new h (h~, [BB, BN]) for columns offs_n of the W-wide h: zoneout against
    h_{s-1} (read from h_prev, the step's h-state slot), held on finished rows, stored to the
    next h-state slot and to y at the rows' positions (zeros on finished rows)."""
    h_own = load_tile(h_prev, offs_b, vb, offs_n, vn, W).to(h_new.dtype)
    if ZO != 0:
        h_new = zone_mix(load_zone(zh, s, offs_b, vb, offs_n, vn, B, W, h_new.dtype, ZO), h_own, h_new)
    store_tile(hs + step_offset((s + 1) % NS, B, W), tl.where(a2, h_new, h_own), offs_b, vb, offs_n, vn, W)
    store_pos(y, tl.where(a2, h_new, 0.0), t, offs_b, vb, offs_n, vn, B, W)


@triton.jit
def _bn_h_bwd(dp, s, slot, offs_b, vb, col, vc, B, G, a2, n, hhat_ws, stats_h, rv_h, bn_wh, dg_h,
              eps, BN: tl.constexpr):
    """BN_h backward of one gate block: stores dgamma_h of step s, returns dL/d(W_hh h m)."""
    xh = load_tile(hhat_ws + step_offset(s, B, G), offs_b, vb, col, vc, G)
    _, var = bn_saved_stats(s, slot, col, vc, G, stats_h, rv_h, rv_h, dp.dtype, BN)
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(dg_h + tl.cast(s, tl.int64) * G + col, tl.sum(tl.where(a2, dp * xh, 0.0), axis=0), mask=vc)
    gamma = tl.load(bn_wh + col, mask=vc, other=0.0).to(dp.dtype)
    return bn_backward(dp * gamma[None, :], xh, rstd, a2, n, BN)


@triton.jit
def bwd_cell(dhc, dc, s, t, active, offs_b, vb, offs_j, vj, B, H, slot, eps, act_ws, cs_prev,
             cs_new, hhat_ws, stats_h, stats_c, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, dxp, dhh_ws,
             dg_h, dg_c, db_c, zc, BN: tl.constexpr, ZO: tl.constexpr):
    """Backward of one step for hidden units offs_j.

    dhc [BB, BH]: dL/d(o * tanh(c_hat)) (zero on finished rows); dc: dL/dc_s from later
    steps.  Stores dxp at the rows' positions t, dhh of step s and the batch-norm
    parameter gradients of step s; returns dL/dc_{s-1}.  Zoneout (ZO): c_s = z c_{s-1} +
    (1 - z) c~_s, so c~_s (what the gates and the output saw) is recomputed from the
    saved gates, dL/dc~ gets (1 - z) dc and dL/dc_{s-1} gets z dc besides f dL/dc~."""
    G = 4 * H
    a2 = active[:, None]
    m2 = vb[:, None] & vj[None, :]
    ab = act_ws + step_offset(s, B, G)
    i = load_tile(ab, offs_b, vb, offs_j, vj, G)
    f = load_tile(ab + H, offs_b, vb, offs_j, vj, G)
    g = load_tile(ab + 2 * H, offs_b, vb, offs_j, vj, G)
    o = load_tile(ab + 3 * H, offs_b, vb, offs_j, vj, G)
    c_prev = load_tile(cs_prev, offs_b, vb, offs_j, vj, H)
    if ZO != 0:
        c_new = f * c_prev + i * g  # c~ (cs holds the zoned-out state)
    else:
        c_new = load_tile(cs_new, offs_b, vb, offs_j, vj, H)
    n = tl.maximum(tl.sum(active.to(dhc.dtype), axis=0), 1.0)
    c_hat = c_new
    if BN != 0:
        mean, var = bn_saved_stats(s, slot, offs_j, vj, H, stats_c, rm_c, rv_c, dhc.dtype, BN)
        rstd = 1.0 / tl.sqrt(var + eps)
        xc = (c_new - mean[None, :]) * rstd[None, :]
        gamma = tl.load(bn_wc + offs_j, mask=vj, other=0.0).to(dhc.dtype)
        beta = tl.load(bn_bc + offs_j, mask=vj, other=0.0).to(dhc.dtype)
        c_hat = xc * gamma[None, :] + beta[None, :]
    tc = tanh(c_hat)
    do = dhc * tc
    dch = dhc * o * (1.0 - tc * tc)
    if BN != 0:
        so = tl.cast(s, tl.int64) * H + offs_j
        tl.store(dg_c + so, tl.sum(tl.where(a2, dch * xc, 0.0), axis=0), mask=vj)
        tl.store(db_c + so, tl.sum(tl.where(a2, dch, 0.0), axis=0), mask=vj)
        dch = bn_backward(dch * gamma[None, :], xc, rstd, a2, n, BN)
    if ZO != 0:
        z = load_zone(zc, s, offs_b, vb, offs_j, vj, B, H, dhc.dtype, ZO)
        dct = tl.where(a2, (1.0 - z) * dc + dch, 0.0)
    else:
        dct = tl.where(a2, dc + dch, 0.0)
    dp_i = tl.where(a2, dct * g * i * (1.0 - i), 0.0)
    dp_f = tl.where(a2, dct * c_prev * f * (1.0 - f), 0.0)
    dp_g = tl.where(a2, dct * i * (1.0 - g * g), 0.0)
    dp_o = tl.where(a2, do * o * (1.0 - o), 0.0)
    rows = offs_b[:, None] * G + offs_j[None, :]
    xr = dxp + t[:, None].to(tl.int64) * B * G + rows
    ty = dxp.dtype.element_ty
    # (stores interleaved with the casts, not store_gates: the persistent backward sits at the
    # register limit, and four live converted tiles spill)
    tl.store(xr, dp_i.to(ty), mask=m2)
    tl.store(xr + H, dp_f.to(ty), mask=m2)
    tl.store(xr + 2 * H, dp_g.to(ty), mask=m2)
    tl.store(xr + 3 * H, dp_o.to(ty), mask=m2)
    if BN != 0:
        dp_i = _bn_h_bwd(dp_i, s, slot, offs_b, vb, offs_j, vj, B, G, a2, n, hhat_ws, stats_h,
                         rv_h, bn_wh, dg_h, eps, BN)
        dp_f = _bn_h_bwd(dp_f, s, slot, offs_b, vb, H + offs_j, vj, B, G, a2, n, hhat_ws, stats_h,
                         rv_h, bn_wh, dg_h, eps, BN)
        dp_g = _bn_h_bwd(dp_g, s, slot, offs_b, vb, 2 * H + offs_j, vj, B, G, a2, n, hhat_ws,
                         stats_h, rv_h, bn_wh, dg_h, eps, BN)
        dp_o = _bn_h_bwd(dp_o, s, slot, offs_b, vb, 3 * H + offs_j, vj, B, G, a2, n, hhat_ws,
                         stats_h, rv_h, bn_wh, dg_h, eps, BN)
    hr = dhh_ws + step_offset(s, B, G) + rows
    tl.store(hr, tl.where(a2, dp_i, 0.0), mask=m2)
    tl.store(hr + H, tl.where(a2, dp_f, 0.0), mask=m2)
    tl.store(hr + 2 * H, tl.where(a2, dp_g, 0.0), mask=m2)
    tl.store(hr + 3 * H, tl.where(a2, dp_o, 0.0), mask=m2)
    if ZO != 0:  # z read again rather than kept live across the stores (a spill on sm_80)
        z = load_zone(zc, s, offs_b, vb, offs_j, vj, B, H, dhc.dtype, ZO)
        return tl.where(a2, dct * f + z * dc, dc)
    return tl.where(a2, dct * f, dc)


# ---- per-step design: forward --------------------------------------------------------


@triton.jit(do_not_specialize=_DNS)
def fwd_step_kernel(xp, w_hh, mask, lengths, hs, cs, y, hc_ws, act_ws, hhat_ws, stats_h, stats_c,
                    bn_wh, bn_wc, bn_bc, rm_h, rv_h, rm_c, rv_c, zc, zh, ln_part,
                    s, T, B, H, R, NS, NSC, bn_off, bn_S, eps,
                    MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                    BN: tl.constexpr, PROJ: tl.constexpr, SAVE: tl.constexpr, ZO: tl.constexpr,
                    PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """Step s, hidden units block program_id(0), rows block program_id(1): the gates
    GEMM (K = R in chunks of BK), the fused cell, zoneout, and the new h (or, with
    proj_size, the pre-projection hc that fwd_proj_kernel projects).  Layer norm (BN == 3):
    the GEMM only, its raw W_hh h m stored to hhat_ws slot s % NSC for fwd_ln_kernel, which
    normalises whole rows, and each row's (mean, M2) over this block's 4 x BH gate columns
    to ln_part [n_col_blocks, 2, B] (merged there by Chan's formula)."""
    ACC = cs.dtype.element_ty
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, s, T, B, H, BB, BH, HAS_LEN, REVERSE)
    slot = tl.minimum(bn_off + s, bn_S - 1)
    h_prev, m_ptr = step_operands(hs, mask, s, NS, B, R, MASK)
    z = tl.zeros([BB, BH], dtype=ACC)
    a_i, a_f, a_g, a_o = gates_stream(z, z, z, z, h_prev, m_ptr, offs_b, vb, R, H, w_hh, offs_j,
                                      vj, MASK != 0, PREC, BK, KST)
    if BN == 3:
        raw = hhat_ws + step_offset(s % NSC, B, 4 * H)
        store_tile(raw, a_i, offs_b, vb, offs_j, vj, 4 * H)
        store_tile(raw + H, a_f, offs_b, vb, offs_j, vj, 4 * H)
        store_tile(raw + 2 * H, a_g, offs_b, vb, offs_j, vj, 4 * H)
        store_tile(raw + 3 * H, a_o, offs_b, vb, offs_j, vj, 4 * H)
        v2 = vj[None, :]
        n_blk = 4 * tl.sum(vj.to(ACC), axis=0)
        mean = tl.sum(tl.where(v2, a_i + a_f + a_g + a_o, 0.0), axis=1) / n_blk
        m = mean[:, None]
        m2 = tl.sum(tl.where(v2, (a_i - m) * (a_i - m) + (a_f - m) * (a_f - m) + (a_g - m) * (a_g - m)
                             + (a_o - m) * (a_o - m), 0.0), axis=1)
        pp = ln_part + tl.program_id(0).to(tl.int64) * 2 * B + offs_b
        tl.store(pp, mean, mask=vb)
        tl.store(pp + B, m2, mask=vb)
    else:
        c_prev = load_tile(cs + step_offset(s % NS, B, H), offs_b, vb, offs_j, vj, H)
        hc, c_new = fwd_cell(a_i, a_f, a_g, a_o, c_prev, xp, s, t, active, offs_b, vb, offs_j, vj, B,
                             H, slot, eps, act_ws, hhat_ws, stats_h, stats_c, bn_wh, bn_wc, bn_bc,
                             rm_h, rv_h, rm_c, rv_c, BN, SAVE)
        if ZO != 0:
            c_new = zone_mix(load_zone(zc, s, offs_b, vb, offs_j, vj, B, H, ACC, ZO), c_prev, c_new)
        a2 = active[:, None]
        store_tile(cs + step_offset((s + 1) % NS, B, H), tl.where(a2, c_new, c_prev), offs_b, vb,
                   offs_j, vj, H)
        if PROJ:
            store_tile(hc_ws + step_offset(s % NSC, B, H), hc, offs_b, vb, offs_j, vj, H)
        else:
            emit_h(hc, h_prev, hs, y, zh, s, t, a2, offs_b, vb, offs_j, vj, B, R, NS, ZO)


@triton.jit(do_not_specialize=_DNS)
def fwd_proj_kernel(w_hr, lengths, hs, y, hc_ws, zh, s, T, B, H, P, NS, NSC,
                    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, ZO: tl.constexpr, PREC: tl.constexpr,
                    BB: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """Step s with proj_size: h = hc @ W_hr^T (zoned out) for projection columns block
    program_id(0)."""
    ACC = hc_ws.dtype.element_ty
    offs_p, vp, offs_b, vb, L, active, t = step_program(lengths, s, T, B, P, BB, BP, HAS_LEN, REVERSE)
    acc = mm_stream(tl.zeros([BB, BP], dtype=ACC), hc_ws + step_offset(s % NSC, B, H), hc_ws,
                    offs_b, vb, H, w_hr, 1, offs_p, vp, H, False, PREC, BK, KST)
    a2 = active[:, None]
    h_prev = hs + step_offset(s % NS, B, P)
    emit_h(acc, h_prev, hs, y, zh, s, t, a2, offs_b, vb, offs_p, vp, B, P, NS, ZO)


# ---- per-step design: backward -------------------------------------------------------


@triton.jit
def transfer(dh, nxt, L, vb, offs_b, offs_r, vr, B, G, R, dhh_ws, w_hh, w_t, mask, zh,
             MASK: tl.constexpr, REVERSE: tl.constexpr, RESIDENT: tl.constexpr, ZO: tl.constexpr,
             PREC: tl.constexpr, BK: tl.constexpr, GP: tl.constexpr, KST: tl.constexpr):
    """dL/dh_{nxt-1} for columns offs_r, given dh = dL/dh_nxt (all of it, dy included):
    (dhh_nxt @ W_hh) * m_nxt (+ z_nxt * dh with zoneout, where h_nxt kept h_{nxt-1}) on the
    rows active at step nxt, dh itself on the others (a finished row's h is held).
    RESIDENT: W_hh[:, offs_r] is the on-chip tile w_t [GP, BR]; else it is streamed from
    w_hh in chunks of BK."""
    act_n, _ = row_step(L, vb, nxt, REVERSE)
    dn = dhh_ws + step_offset(nxt, B, G)
    z = tl.zeros_like(dh)
    if RESIDENT:
        offs_g = tl.arange(0, GP)
        a = load_tile(dn, offs_b, vb, offs_g, offs_g < G, G).to(w_t.dtype)
        tr = tl.dot(a, w_t, z, input_precision=PREC)
    else:
        tr = mm_stream(z, dn, dn, offs_b, vb, G, w_hh, R, offs_r, vr, 1, False, PREC, BK, KST)
    if MASK == 1:
        tr = tr * load_tile(mask, offs_b, vb, offs_r, vr, R).to(tr.dtype)
    if MASK == 2:
        tr = tr * load_tile(mask + step_offset(nxt, B, R), offs_b, vb, offs_r, vr, R).to(tr.dtype)
    if ZO != 0:
        tr = tr + load_zone(zh, nxt, offs_b, vb, offs_r, vr, B, R, tr.dtype, ZO) * dh
    return tl.where(act_n[:, None], tr, dh)


@triton.jit
def output_grad(dh, dy_t, a2, zh, s, offs_b, vb, offs_r, vr, B, R, ZO: tl.constexpr):
    """Given dh = dL/dh_s from the steps after s: (the dh to carry to step s - 1, dL/dh~_s).
    h~_s is the step's new output before zoneout; it gets (dh + dy_s) on the active rows,
    times (1 - z_s) with zoneout, and 0 on finished rows.  With zoneout the carried dh has
    dy_s in it, since z_s of it reaches h_{s-1} directly (transfer)."""
    if ZO != 0:
        dtot = tl.where(a2, dh + dy_t, dh)
        return dtot, tl.where(a2, (1.0 - load_zone(zh, s, offs_b, vb, offs_r, vr, B, R, dh.dtype, ZO)) * dtot, 0.0)
    # without zoneout a step's W_hh transfer replaces the carried dh on the rows it runs
    # (transfer), so dy need not be carried: one tile fewer live in the persistent backward
    return dh, tl.where(a2, dh + dy_t, 0.0)


@triton.jit(do_not_specialize=_DNS)
def bwd_step_kernel(dy, dh_n, dc_n, w_hh, w_hr, mask, lengths, cs, act_ws, hhat_ws, stats_h,
                    stats_c, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, zc, zh, dxp, dhh_ws, dhn_ws, dh_buf,
                    dc_buf, dg_h, dg_c, db_c,
                    s, T, B, H, R, bn_off, bn_S, eps,
                    MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                    BN: tl.constexpr, PROJ: tl.constexpr, ZO: tl.constexpr, PREC: tl.constexpr,
                    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """Backward step s for hidden units block program_id(0), rows block program_id(1).

    dL/dh_s arrives as dhn[s] (with proj_size: bwd_transfer_kernel projected it) or is
    computed here from step s + 1's dhh (GEMM with W_hh, K = G); the ring buffers dh_buf /
    dc_buf [2, B, *] carry dL/dh_s (dy included) and dL/dc_s to step s - 1."""
    ACC = cs.dtype.element_ty
    G = 4 * H
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, s, T, B, H, BB, BH, HAS_LEN, REVERSE)
    a2 = active[:, None]
    slot = tl.minimum(bn_off + s, bn_S - 1)
    if PROJ:
        dn = dhn_ws + step_offset(s, B, R)
        dhc = mm_stream(tl.zeros([BB, BH], dtype=ACC), dn, dn, offs_b, vb, R, w_hr, H, offs_j, vj,
                        1, False, PREC, BK, KST)
    else:
        if s < T - 1:
            dh = load_tile(dh_buf + step_offset((s + 1) % 2, B, R), offs_b, vb, offs_j, vj, R)
            dh = transfer(dh, s + 1, L, vb, offs_b, offs_j, vj, B, G, R, dhh_ws, w_hh, w_hh, mask, zh,
                          MASK, REVERSE, False, ZO, PREC, BK, 16, KST)
        else:
            dh = load_tile(dh_n, offs_b, vb, offs_j, vj, R).to(ACC)
        dy_t = load_pos(dy, t, offs_b, vb, offs_j, vj, B, R).to(ACC)
        dh, dhc = output_grad(dh, dy_t, a2, zh, s, offs_b, vb, offs_j, vj, B, R, ZO)
        store_tile(dh_buf + step_offset(s % 2, B, R), dh, offs_b, vb, offs_j, vj, R)
    if s < T - 1:
        dc = load_tile(dc_buf + step_offset((s + 1) % 2, B, H), offs_b, vb, offs_j, vj, H)
    else:
        dc = load_tile(dc_n, offs_b, vb, offs_j, vj, H).to(ACC)
    dc = bwd_cell(dhc, dc, s, t, active, offs_b, vb, offs_j, vj, B, H, slot, eps, act_ws,
                  cs + step_offset(s, B, H), cs + step_offset(s + 1, B, H), hhat_ws, stats_h,
                  stats_c, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, dxp, dhh_ws, dg_h, dg_c, db_c, zc,
                  BN, ZO)
    store_tile(dc_buf + step_offset(s % 2, B, H), dc, offs_b, vb, offs_j, vj, H)


@triton.jit(do_not_specialize=_DNS)
def bwd_transfer_kernel(dy, dh_n, w_hh, mask, lengths, zh, dhh_ws, dh_buf, dhn_ws, dh0,
                        s, T, B, H, R,
                        MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                        ZO: tl.constexpr, FINAL: tl.constexpr, PREC: tl.constexpr,
                        BB: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """dL/dh_s for h columns block program_id(0) from step s + 1's dhh.  Before the cell's
    backward of step s (proj_size: bwd_step_kernel; layer norm: bwd_ln_kernel) it adds dy and
    stores dhn[s], the gradient of the step's new output h~_s; FINAL (s = -1) it stores
    dL/dh0."""
    ACC = dh_buf.dtype.element_ty
    G = 4 * H
    offs_r, vr, offs_b, vb, L, active, t = step_program(lengths, s, T, B, R, BB, BR, HAS_LEN, REVERSE)
    nxt = s + 1
    if nxt < T:
        dh = load_tile(dh_buf + step_offset(nxt % 2, B, R), offs_b, vb, offs_r, vr, R)
        dh = transfer(dh, nxt, L, vb, offs_b, offs_r, vr, B, G, R, dhh_ws, w_hh, w_hh, mask, zh,
                      MASK, REVERSE, False, ZO, PREC, BK, 16, KST)
    else:
        dh = load_tile(dh_n, offs_b, vb, offs_r, vr, R).to(ACC)
    if FINAL:
        store_tile(dh0, dh, offs_b, vb, offs_r, vr, R)
    else:
        dy_t = load_pos(dy, t, offs_b, vb, offs_r, vr, B, R).to(ACC)
        dh, dnew = output_grad(dh, dy_t, active[:, None], zh, s, offs_b, vb, offs_r, vr, B, R, ZO)
        store_tile(dh_buf + step_offset(s % 2, B, R), dh, offs_b, vb, offs_r, vr, R)
        store_tile(dhn_ws + step_offset(s, B, R), dnew, offs_b, vb, offs_r, vr, R)


# ---- per-step design: layer norm (whole rows) -----------------------------------------


@triton.jit
def merged_stats(part, offs_b, vb, H, eps, stats, s, B, BB: tl.constexpr, BG: tl.constexpr, NP: tl.constexpr):
    """Each row's (mean, rstd) over its 4H gate values, from the per-block (mean, M2) that the
    GEMM programs (BG hidden units each: 4 x min(BG, units left) values) stored to part
    [n_blocks, 2, B]: Chan's merge, mean = sum n_k m_k / 4H, M2 = sum M2_k + n_k (m_k - mean)^2,
    reading NP blocks per load.  Stored to stats[s, 0 | 1, rows]."""
    G = 4 * H
    nblk = tl.cdiv(H, BG)
    mean = tl.zeros([BB], dtype=stats.dtype.element_ty)
    for k0 in range(0, nblk, NP):
        k = k0 + tl.arange(0, NP)
        n_k = 4 * tl.minimum(BG, H - k * BG).to(mean.dtype)
        m_k = tl.load(part + k[None, :].to(tl.int64) * 2 * B + offs_b[:, None], mask=vb[:, None] & (k < nblk)[None, :],
                      other=0.0)
        mean += tl.sum(tl.where((k < nblk)[None, :], n_k[None, :] * m_k, 0.0), axis=1)
    mean = mean / G
    m2 = tl.zeros([BB], dtype=mean.dtype)
    for k0 in range(0, nblk, NP):
        k = k0 + tl.arange(0, NP)
        vk = (k < nblk)[None, :]
        n_k = 4 * tl.minimum(BG, H - k * BG).to(mean.dtype)
        pk = part + k[None, :].to(tl.int64) * 2 * B + offs_b[:, None]
        d = tl.load(pk, mask=vb[:, None] & vk, other=0.0) - mean[:, None]
        m2 += tl.sum(tl.where(vk, tl.load(pk + B, mask=vb[:, None] & vk, other=0.0) + n_k[None, :] * d * d, 0.0),
                     axis=1)
    rstd = 1.0 / tl.sqrt(m2 / G + eps)
    sp = stats + tl.cast(s, tl.int64) * 2 * B + offs_b
    tl.store(sp, mean, mask=vb)
    tl.store(sp + B, rstd, mask=vb)
    return mean, rstd


@triton.jit
def merge_block(n, mean, m2, v, valid, nb):
    """Chan's merge of a running (count n, mean, M2) [BB] with one block v [BB, BC] of nb valid
    columns per row (valid [BB, BC]): the statistics of both together."""
    bm = tl.sum(tl.where(valid, v, 0.0), axis=1) / nb
    dv = tl.where(valid, v - bm[:, None], 0.0)
    n_new = n + nb
    d = bm - mean
    return n_new, mean + d * (nb / n_new), m2 + tl.sum(dv * dv, axis=1) + d * d * (n * nb / n_new)


@triton.jit
def _ln_gate(raw, offs_b, vb, col, vj, G, mean, rstd, ln_wh):
    """LN_h of one gate block: x_hat (stored over the raw values) and gamma_h * x_hat."""
    xh = (load_tile(raw, offs_b, vb, col, vj, G) - mean[:, None]) * rstd[:, None]
    store_tile(raw, xh, offs_b, vb, col, vj, G)
    return xh * tl.load(ln_wh + col, mask=vj, other=0.0).to(xh.dtype)[None, :]


@triton.jit(do_not_specialize=_DNS)
def fwd_ln_kernel(xp, lengths, hs, cs, y, hc_ws, act_ws, hhat_ws, stats_h, stats_c, bn_wh, bn_wc, bn_bc,
                  zc, zh, ln_part, s, T, B, H, R, NS, NSC, eps,
                  HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, PROJ: tl.constexpr, SAVE: tl.constexpr,
                  ZO: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BG: tl.constexpr, NP: tl.constexpr):
    """Layer norm, step s, after fwd_step_kernel stored the raw W_hh h m and its per-block
    statistics: rows block program_id(0), every column, in two passes over BH-wide blocks:
    LN_h statistics merged from the GEMM programs' (merged_stats); x_hat over the raw values,
    the gates, c~ (in the next cell-state slot) and LN_c's statistics merged block by block;
    then the output o * tanh(LN_c(c~)), zoneout and the new state.  bn_wh, bn_wc, bn_bc:
    LN_h's gain, LN_c's gain and bias (LN_h's bias is in xp).  stats_h / stats_c [T, 2, B]:
    each row's mean and 1 / sqrt(var + eps)."""
    ACC = cs.dtype.element_ty
    G = 4 * H
    offs_b = tl.program_id(0) * BB + tl.arange(0, BB)
    vb = offs_b < B
    L = row_lengths(lengths, offs_b, vb, T, HAS_LEN)
    active, t = row_step(L, vb, s, REVERSE)
    a2 = active[:, None]
    raw = hhat_ws + step_offset(s % NSC, B, G)
    c_prev_p = cs + step_offset(s % NS, B, H)
    c_next_p = cs + step_offset((s + 1) % NS, B, H)
    mean_h, rstd_h = merged_stats(ln_part, offs_b, vb, H, eps, stats_h, s, B, BB, BG, NP)
    cn = tl.zeros([BB], dtype=ACC)
    c_mean = tl.zeros([BB], dtype=ACC)
    c_m2 = tl.zeros([BB], dtype=ACC)
    for j0 in range(0, H, BH):
        offs_j = j0 + tl.arange(0, BH)
        vj = offs_j < H
        m2 = vb[:, None] & vj[None, :]
        xr = xp + t[:, None].to(tl.int64) * B * G + offs_b[:, None] * G + offs_j[None, :]
        ar = act_ws + step_offset(s, B, G) + offs_b[:, None] * G + offs_j[None, :]
        # one gate at a time, each stored as soon as it is made (fewer live tiles)
        i = sigmoid(_ln_gate(raw, offs_b, vb, offs_j, vj, G, mean_h, rstd_h, bn_wh)
                    + tl.load(xr, mask=m2, other=0.0).to(ACC))
        g = tanh(_ln_gate(raw, offs_b, vb, 2 * H + offs_j, vj, G, mean_h, rstd_h, bn_wh)
                 + tl.load(xr + 2 * H, mask=m2, other=0.0).to(ACC))
        if SAVE:
            tl.store(ar, i, mask=m2)
            tl.store(ar + 2 * H, g, mask=m2)
        ig = i * g
        f = sigmoid(_ln_gate(raw, offs_b, vb, H + offs_j, vj, G, mean_h, rstd_h, bn_wh)
                    + tl.load(xr + H, mask=m2, other=0.0).to(ACC))
        if SAVE:
            tl.store(ar + H, f, mask=m2)
        c_til = f * load_tile(c_prev_p, offs_b, vb, offs_j, vj, H) + ig
        store_tile(c_next_p, c_til, offs_b, vb, offs_j, vj, H)
        cn, c_mean, c_m2 = merge_block(cn, c_mean, c_m2, c_til, m2, tl.sum(vj.to(ACC), axis=0))
        # x_hat of the o gate (the output pass recomputes o from it when nothing is saved)
        o = sigmoid(_ln_gate(raw, offs_b, vb, 3 * H + offs_j, vj, G, mean_h, rstd_h, bn_wh)
                    + tl.load(xr + 3 * H, mask=m2, other=0.0).to(ACC))
        if SAVE:
            tl.store(ar + 3 * H, o, mask=m2)
    mean_c, rstd_c = c_mean, 1.0 / tl.sqrt(c_m2 / H + eps)
    sp = stats_c + tl.cast(s, tl.int64) * 2 * B + offs_b
    tl.store(sp, mean_c, mask=vb)
    tl.store(sp + B, rstd_c, mask=vb)
    tl.debug_barrier()  # c~ and x_hat of every block are written before any thread reads them
    for j0 in range(0, H, BH):
        offs_j = j0 + tl.arange(0, BH)
        vj = offs_j < H
        m2 = vb[:, None] & vj[None, :]
        c_til = load_tile(c_next_p, offs_b, vb, offs_j, vj, H)
        c_prev = load_tile(c_prev_p, offs_b, vb, offs_j, vj, H)
        gamma = tl.load(bn_wc + offs_j, mask=vj, other=0.0).to(ACC)
        beta = tl.load(bn_bc + offs_j, mask=vj, other=0.0).to(ACC)
        c_hat = (c_til - mean_c[:, None]) * rstd_c[:, None] * gamma[None, :] + beta[None, :]
        if SAVE:  # the saved gate
            o = load_tile(act_ws + step_offset(s, B, G) + 3 * H, offs_b, vb, offs_j, vj, G)
        else:  # recomputed from its x_hat
            xo = load_tile(raw, offs_b, vb, 3 * H + offs_j, vj, G)
            xr = xp + t[:, None].to(tl.int64) * B * G + offs_b[:, None] * G + 3 * H + offs_j[None, :]
            o = sigmoid(xo * tl.load(bn_wh + 3 * H + offs_j, mask=vj, other=0.0).to(ACC)[None, :]
                        + tl.load(xr, mask=m2, other=0.0).to(ACC))
        hc = o * tanh(c_hat)
        c_new = c_til
        if ZO != 0:
            c_new = zone_mix(load_zone(zc, s, offs_b, vb, offs_j, vj, B, H, ACC, ZO), c_prev, c_til)
        store_tile(c_next_p, tl.where(a2, c_new, c_prev), offs_b, vb, offs_j, vj, H)
        if PROJ:
            store_tile(hc_ws + step_offset(s % NSC, B, H), hc, offs_b, vb, offs_j, vj, H)
        else:
            emit_h(hc, hs + step_offset(s % NS, B, R), hs, y, zh, s, t, a2, offs_b, vb, offs_j, vj, B, R, NS, ZO)


@triton.jit
def _ln_c_bwd(act_ws, cs, dhn_ws, dhh_ws, w_hr, s, offs_b, vb, offs_j, vj, B, H, R, mean_c, rstd_c, bn_wc, bn_bc,
              STORE: tl.constexpr, PROJ: tl.constexpr, PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
              BK: tl.constexpr, KST: tl.constexpr):
    """One hidden block of step s's cell backward up to LN_c: the gates, c_{s-1}, c~, LN_c's
    x_hat, tanh(c_hat), dL/dh~ (STORE: from dhn[s], times W_hr with proj_size, kept in the o
    columns of dhh[s] for the second pass; else read back from there) and dL/dc_hat."""
    G = 4 * H
    ab = act_ws + step_offset(s, B, G)
    i = load_tile(ab, offs_b, vb, offs_j, vj, G)
    f = load_tile(ab + H, offs_b, vb, offs_j, vj, G)
    g = load_tile(ab + 2 * H, offs_b, vb, offs_j, vj, G)
    o = load_tile(ab + 3 * H, offs_b, vb, offs_j, vj, G)
    c_prev = load_tile(cs + step_offset(s, B, H), offs_b, vb, offs_j, vj, H)
    xc = (f * c_prev + i * g - mean_c[:, None]) * rstd_c[:, None]
    gamma = tl.load(bn_wc + offs_j, mask=vj, other=0.0).to(i.dtype)
    tc = tanh(xc * gamma[None, :] + tl.load(bn_bc + offs_j, mask=vj, other=0.0).to(i.dtype)[None, :])
    keep = dhh_ws + step_offset(s, B, G) + 3 * H
    if STORE:
        dn = dhn_ws + step_offset(s, B, R)
        if PROJ:
            dhc = mm_stream(tl.zeros([BB, BH], dtype=i.dtype), dn, dn, offs_b, vb, R, w_hr, H, offs_j, vj, 1,
                            False, PREC, BK, KST)
        else:
            dhc = load_tile(dn, offs_b, vb, offs_j, vj, R)
        store_tile(keep, dhc, offs_b, vb, offs_j, vj, G)
    else:
        dhc = load_tile(keep, offs_b, vb, offs_j, vj, G)
    dchat = dhc * o * (1.0 - tc * tc)
    return i, f, g, o, c_prev, xc, tc, gamma, dhc, dchat


@triton.jit
def _ln_h_sums(dp, n1, n2, hh, ln_wh, dg_h, prow, offs_b, vb, col, vc, G):
    """LN_h backward of one gate block, first part: adds the block's share of the row sums of
    dL/dx_hat and dL/dx_hat * x_hat to n1, n2 [BB]; stores its gain gradient to dg_h row prow."""
    xh = load_tile(hh, offs_b, vb, col, vc, G)
    dxh = dp * tl.load(ln_wh + col, mask=vc, other=0.0).to(dp.dtype)[None, :]
    tl.store(dg_h + prow * G + col, tl.sum(dp * xh, axis=0), mask=vc)
    return n1 + tl.sum(dxh, axis=1), n2 + tl.sum(dxh * xh, axis=1)


@triton.jit(do_not_specialize=_DNS)
def bwd_ln_kernel(dc_n, w_hr, lengths, cs, act_ws, hhat_ws, stats_h, stats_c, bn_wh, bn_wc, bn_bc, zc, dxp,
                  dhh_ws, dhn_ws, dc_buf, dg_h, dg_c, db_c, s, T, B, H, R, eps,
                  HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, PROJ: tl.constexpr, ZO: tl.constexpr,
                  PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """Layer norm, backward step s, after bwd_transfer_kernel stored dhn[s] (dL/dh~_s): rows
    block program_id(0), every column, in passes over BH-wide blocks: LN_c's row sums; the
    gate gradients (dxp at the rows' positions, kept in dhh[s]), dL/dc_{s-1} into dc_buf
    and LN_h's row sums; then LN_h's backward over dhh[s] in place.  The LN parameter
    gradients of step s and this row block go to row s * n_row_blocks + program_id(0) of
    dg_h [*, G], dg_c, db_c [*, H] (summed on the host: no atomics, the same sums every run)."""
    ACC = cs.dtype.element_ty
    G = 4 * H
    pid = tl.program_id(0)
    offs_b = pid * BB + tl.arange(0, BB)
    vb = offs_b < B
    L = row_lengths(lengths, offs_b, vb, T, HAS_LEN)
    active, t = row_step(L, vb, s, REVERSE)
    a2 = active[:, None]
    sp = stats_c + tl.cast(s, tl.int64) * 2 * B + offs_b
    mean_c = tl.load(sp, mask=vb, other=0.0)
    rstd_c = tl.load(sp + B, mask=vb, other=1.0)
    rstd_h = tl.load(stats_h + tl.cast(s, tl.int64) * 2 * B + B + offs_b, mask=vb, other=1.0)
    prow = (tl.cast(s, tl.int64) * tl.num_programs(0) + pid)
    m1 = tl.zeros([BB], dtype=ACC)
    m2 = tl.zeros([BB], dtype=ACC)
    for j0 in range(0, H, BH):  # pass 1: LN_c's row sums, LN_c's parameter gradients
        offs_j = j0 + tl.arange(0, BH)
        vj = offs_j < H
        i, f, g, o, c_prev, xc, tc, gamma, dhc, dchat = _ln_c_bwd(
            act_ws, cs, dhn_ws, dhh_ws, w_hr, s, offs_b, vb, offs_j, vj, B, H, R, mean_c, rstd_c, bn_wc, bn_bc,
            True, PROJ, PREC, BB, BH, BK, KST)
        dxc = tl.where(a2, dchat * gamma[None, :], 0.0)
        m1 += tl.sum(dxc, axis=1)
        m2 += tl.sum(dxc * xc, axis=1)
        tl.store(dg_c + prow * H + offs_j, tl.sum(tl.where(a2, dchat * xc, 0.0), axis=0), mask=vj)
        tl.store(db_c + prow * H + offs_j, tl.sum(tl.where(a2, dchat, 0.0), axis=0), mask=vj)
    m1 = m1 / H
    m2 = m2 / H
    tl.debug_barrier()
    n1 = tl.zeros([BB], dtype=ACC)
    n2 = tl.zeros([BB], dtype=ACC)
    hh = hhat_ws + step_offset(s, B, G)
    dd = dhh_ws + step_offset(s, B, G)
    for j0 in range(0, H, BH):  # pass 2: the gate gradients, dL/dc_{s-1}, LN_h's row sums
        offs_j = j0 + tl.arange(0, BH)
        vj = offs_j < H
        m2t = vb[:, None] & vj[None, :]
        i, f, g, o, c_prev, xc, tc, gamma, dhc, dchat = _ln_c_bwd(
            act_ws, cs, dhn_ws, dhh_ws, w_hr, s, offs_b, vb, offs_j, vj, B, H, R, mean_c, rstd_c, bn_wc, bn_bc,
            False, PROJ, PREC, BB, BH, BK, KST)
        dtil = rstd_c[:, None] * (dchat * gamma[None, :] - m1[:, None] - xc * m2[:, None])
        if s < T - 1:
            dc = load_tile(dc_buf + step_offset((s + 1) % 2, B, H), offs_b, vb, offs_j, vj, H)
        else:
            dc = load_tile(dc_n, offs_b, vb, offs_j, vj, H).to(ACC)
        if ZO != 0:  # as in bwd_cell: (1 - z) of dL/dc_s reaches c~, z of it c_{s-1}
            z = load_zone(zc, s, offs_b, vb, offs_j, vj, B, H, ACC, ZO)
            dct = tl.where(a2, (1.0 - z) * dc + dtil, 0.0)
            dc_prev = dct * f + z * dc
        else:
            dct = tl.where(a2, dc + dtil, 0.0)
            dc_prev = dct * f
        store_tile(dc_buf + step_offset(s % 2, B, H), tl.where(a2, dc_prev, dc), offs_b, vb, offs_j, vj, H)
        dp_i = tl.where(a2, dct * g * i * (1.0 - i), 0.0)
        dp_f = tl.where(a2, dct * c_prev * f * (1.0 - f), 0.0)
        dp_g = tl.where(a2, dct * i * (1.0 - g * g), 0.0)
        dp_o = tl.where(a2, dhc * tc * o * (1.0 - o), 0.0)
        rows = offs_b[:, None] * G + offs_j[None, :]
        store_gates(dxp + t[:, None].to(tl.int64) * B * G + rows, H, m2t, dp_i, dp_f, dp_g, dp_o)
        store_gates(dd + rows, H, m2t, dp_i, dp_f, dp_g, dp_o)
        n1, n2 = _ln_h_sums(dp_i, n1, n2, hh, bn_wh, dg_h, prow, offs_b, vb, offs_j, vj, G)
        n1, n2 = _ln_h_sums(dp_f, n1, n2, hh, bn_wh, dg_h, prow, offs_b, vb, H + offs_j, vj, G)
        n1, n2 = _ln_h_sums(dp_g, n1, n2, hh, bn_wh, dg_h, prow, offs_b, vb, 2 * H + offs_j, vj, G)
        n1, n2 = _ln_h_sums(dp_o, n1, n2, hh, bn_wh, dg_h, prow, offs_b, vb, 3 * H + offs_j, vj, G)
    n1 = n1 / G
    n2 = n2 / G
    tl.debug_barrier()
    for j0 in range(0, G, BH):  # pass 3: LN_h's backward: dL/d(W_hh h m), in place
        col = j0 + tl.arange(0, BH)
        vc = col < G
        dp = load_tile(dd, offs_b, vb, col, vc, G)
        xh = load_tile(hh, offs_b, vb, col, vc, G)
        dxh = dp * tl.load(bn_wh + col, mask=vc, other=0.0).to(ACC)[None, :]
        store_tile(dd, tl.where(a2, rstd_h[:, None] * (dxh - n1[:, None] - xh * n2[:, None]), 0.0), offs_b, vb,
                   col, vc, G)


# ---- persistent design ---------------------------------------------------------------


@triton.jit(do_not_specialize=_DNS)
def fwd_persistent_kernel(xp, w_hh, w_hr, mask, lengths, hs, cs, y, hc_ws, act_ws, hhat_ws,
                          stats_h, stats_c, bn_wh, bn_wc, bn_bc, rm_h, rv_h, rm_c, rv_c, zc, zh, bar,
                          T, B, H, R, NS, NSC, bn_off, bn_S, eps,
                          MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                          BN: tl.constexpr, PROJ: tl.constexpr, SAVE: tl.constexpr, ZO: tl.constexpr,
                          RESIDENT: tl.constexpr, PREC: tl.constexpr,
                          BB: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr,
                          RP: tl.constexpr, HP: tl.constexpr):
    """The whole forward in one launch.  Program pid owns rows block pid % n_bblk and
    column block c = pid // n_bblk (n_bblk = cdiv(B, BB); persistent_program): hidden units
    [c * BH, (c + 1) * BH) and, with proj_size, projection columns [c * BP, (c + 1) * BP).
    RESIDENT: its W_hh rows (4 tiles [RP, BH]) and W_hr rows ([HP, BP]) are loaded once,
    before the time loop."""
    ACC = cs.dtype.element_ty
    WT = w_hh.dtype.element_ty
    nprog = tl.num_programs(0)
    offs_b, vb, offs_j, vj, offs_p, vp, L = persistent_program(lengths, T, B, H, R, BB, BH, BP, HAS_LEN)
    offs_k = tl.arange(0, RP)
    vk = offs_k < R
    offs_hk = tl.arange(0, HP)
    vhk = offs_hk < H
    if RESIDENT:
        w_i = load_w(w_hh, offs_k, vk, 1, offs_j, vj, R)
        w_f = load_w(w_hh + H * R, offs_k, vk, 1, offs_j, vj, R)
        w_g = load_w(w_hh + 2 * H * R, offs_k, vk, 1, offs_j, vj, R)
        w_o = load_w(w_hh + 3 * H * R, offs_k, vk, 1, offs_j, vj, R)
        if PROJ:
            w_r = load_w(w_hr, offs_hk, vhk, 1, offs_p, vp, H)
    else:
        w_r = w_hr  # streamed (project)
    c = load_tile(cs, offs_b, vb, offs_j, vj, H)
    for s in range(0, T):
        active, t = row_step(L, vb, s, REVERSE)
        a2 = active[:, None]
        slot = tl.minimum(bn_off + s, bn_S - 1)
        h_prev, m_ptr = step_operands(hs, mask, s, NS, B, R, MASK)
        z = tl.zeros([BB, BH], dtype=ACC)
        if RESIDENT:
            a = load_a(h_prev, m_ptr, offs_b, vb, offs_k, vk, R, MASK != 0).to(WT)
            a_i = tl.dot(a, w_i, z, input_precision=PREC)
            a_f = tl.dot(a, w_f, z, input_precision=PREC)
            a_g = tl.dot(a, w_g, z, input_precision=PREC)
            a_o = tl.dot(a, w_o, z, input_precision=PREC)
        else:
            a_i, a_f, a_g, a_o = gates_stream(z, z, z, z, h_prev, m_ptr, offs_b, vb, R, H, w_hh,
                                              offs_j, vj, MASK != 0, PREC, BK, KST)
        hc, c_new = fwd_cell(a_i, a_f, a_g, a_o, c, xp, s, t, active, offs_b, vb, offs_j, vj, B,
                             H, slot, eps, act_ws, hhat_ws, stats_h, stats_c, bn_wh, bn_wc, bn_bc,
                             rm_h, rv_h, rm_c, rv_c, BN, SAVE)
        if ZO != 0:
            c_new = zone_mix(load_zone(zc, s, offs_b, vb, offs_j, vj, B, H, ACC, ZO), c, c_new)
        c = tl.where(a2, c_new, c)
        if SAVE:
            store_tile(cs + step_offset(s + 1, B, H), c, offs_b, vb, offs_j, vj, H)
        if PROJ:
            hcp = hc_ws + step_offset(s % NSC, B, H)
            store_tile(hcp, hc, offs_b, vb, offs_j, vj, H)
            grid_sync(bar, (2 * s + 1) * nprog)
            hp = project(tl.zeros([BB, BP], dtype=ACC), hcp, offs_b, vb, H, w_r, offs_hk, vhk, w_hr, 1, offs_p, vp,
                         H, RESIDENT, PREC, BK, KST)
            emit_h(hp, h_prev, hs, y, zh, s, t, a2, offs_b, vb, offs_p, vp, B, R, NS, ZO)
            grid_sync(bar, (2 * s + 2) * nprog)
        else:
            emit_h(hc, h_prev, hs, y, zh, s, t, a2, offs_b, vb, offs_j, vj, B, R, NS, ZO)
            grid_sync(bar, (s + 1) * nprog)
    store_tile(cs + step_offset(T % NS, B, H), c, offs_b, vb, offs_j, vj, H)
    grid_reset(bar, nprog)


@triton.jit(do_not_specialize=_DNS)
def bwd_persistent_kernel(dy, dh_n, dc_n, w_hh, w_hr, mask, lengths, cs, act_ws, hhat_ws,
                          stats_h, stats_c, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, zc, zh, dxp, dhh_ws,
                          dhn_ws, dh0, dc0, dg_h, dg_c, db_c, bar,
                          T, B, H, R, bn_off, bn_S, eps,
                          MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                          BN: tl.constexpr, PROJ: tl.constexpr, ZO: tl.constexpr, RESIDENT: tl.constexpr,
                          PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
                          BP: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr, GP: tl.constexpr, PP: tl.constexpr):
    """The whole backward in one launch, the steps in reverse.  Program pid owns the same
    rows / hidden units / projection columns as in the forward; dL/dh (its h columns) and
    dL/dc (its hidden units) stay in registers.  RESIDENT: W_hh[:, its h columns]
    ([GP, BR]) and W_hr[:, its hidden units] ([PP, BH]) are loaded once."""
    ACC = cs.dtype.element_ty
    G = 4 * H
    nprog = tl.num_programs(0)
    offs_b, vb, offs_j, vj, offs_r, vr, L = persistent_program(lengths, T, B, H, R, BB, BH, BP, HAS_LEN)
    if not PROJ:  # h columns are the hidden units
        offs_r = offs_j
        vr = offs_r < R
    offs_q = tl.arange(0, PP)
    vq = offs_q < R
    w_t = w_hh
    if RESIDENT:
        offs_g = tl.arange(0, GP)
        w_t = load_w(w_hh, offs_g, offs_g < G, R, offs_r, vr, 1)
        if PROJ:
            w_p = load_w(w_hr, offs_q, vq, H, offs_j, vj, 1)
    else:
        w_p = w_hr  # streamed (project)
    dh = load_tile(dh_n, offs_b, vb, offs_r, vr, R).to(ACC)
    dc = load_tile(dc_n, offs_b, vb, offs_j, vj, H).to(ACC)
    for it in range(0, T):
        s = T - 1 - it
        active, t = row_step(L, vb, s, REVERSE)
        a2 = active[:, None]
        slot = tl.minimum(bn_off + s, bn_S - 1)
        if s < T - 1:
            dh = transfer(dh, s + 1, L, vb, offs_b, offs_r, vr, B, G, R, dhh_ws, w_hh, w_t, mask, zh,
                          MASK, REVERSE, RESIDENT, ZO, PREC, BK, GP, KST)
        dy_t = load_pos(dy, t, offs_b, vb, offs_r, vr, B, R).to(ACC)
        dh, dnew = output_grad(dh, dy_t, a2, zh, s, offs_b, vb, offs_r, vr, B, R, ZO)
        if PROJ:
            dn = dhn_ws + step_offset(s, B, R)
            store_tile(dn, dnew, offs_b, vb, offs_r, vr, R)
            grid_sync(bar, (2 * it + 1) * nprog)
            dhc = project(tl.zeros([BB, BH], dtype=ACC), dn, offs_b, vb, R, w_p, offs_q, vq, w_hr, H, offs_j, vj, 1,
                          RESIDENT, PREC, BK, KST)
        else:
            dhc = dnew
        dc = bwd_cell(dhc, dc, s, t, active, offs_b, vb, offs_j, vj, B, H, slot, eps, act_ws,
                      cs + step_offset(s, B, H), cs + step_offset(s + 1, B, H), hhat_ws, stats_h,
                      stats_c, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, dxp, dhh_ws, dg_h, dg_c,
                      db_c, zc, BN, ZO)
        if PROJ:
            grid_sync(bar, (2 * it + 2) * nprog)
        else:
            grid_sync(bar, (it + 1) * nprog)
    dh = transfer(dh, 0, L, vb, offs_b, offs_r, vr, B, G, R, dhh_ws, w_hh, w_t, mask, zh, MASK,
                  REVERSE, RESIDENT, ZO, PREC, BK, GP, KST)
    store_tile(dh0, dh, offs_b, vb, offs_r, vr, R)
    store_tile(dc0, dc, offs_b, vb, offs_j, vj, H)
    grid_reset(bar, nprog)
