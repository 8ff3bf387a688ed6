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

Buffers (fp32, or fp64 for fp64 inputs; "ACC"):
  hs [NS, B, R]  h states: hs[0] = h0, hs[s + 1] = h after step s (NS = T + 1 when the
                 forward saves for backward, else 2 used as a ring)
  cs [NS, B, H]  c states, the same way
  hc [NSC, B, H] o * tanh(c_hat) before the projection (proj_size only)
  act [T, B, G]  gate activations i, f, g, o (saved for backward)
  hhat [T, B, G] BN_h normalised W_hh h (batch norm, saved for backward)
  stats_h [T, 2, G], stats_c [T, 2, H]: per-step batch mean / biased variance (BN train)
  dhh [T, B, G]  gradient wrt W_hh h_{s-1} m_s (zero on finished rows): the dW_hh GEMM input
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
    mm_stream,
    persistent_program,
    project,
    row_step,
    sigmoid,
    step_offset,
    step_operands,
    step_program,
    store_gates,
    store_pos,
    store_tile,
    tanh,
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
             dg_h, dg_c, db_c, BN: tl.constexpr):
    """Backward of one step for hidden units offs_j.

    dhc [BB, BH]: dL/d(o * tanh(c_hat)) (zero on finished rows); dc: dL/dc_s from later
    steps.  Stores dxp at the rows' positions t, dhh of step s and the batch-norm
    parameter gradients of step s; returns dL/dc_{s-1}."""
    G = 4 * H
    a2 = active[:, None]
    m2 = vb[:, None] & vj[None, :]
    ab = act_ws + step_offset(s, B, G)
    i = load_tile(ab, offs_b, vb, offs_j, vj, G)
    f = load_tile(ab + H, offs_b, vb, offs_j, vj, G)
    g = load_tile(ab + 2 * H, offs_b, vb, offs_j, vj, G)
    o = load_tile(ab + 3 * H, offs_b, vb, offs_j, vj, G)
    c_prev = load_tile(cs_prev, offs_b, vb, offs_j, vj, H)
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
    return tl.where(a2, dct * f, dc)


# ---- per-step design: forward --------------------------------------------------------


@triton.jit(do_not_specialize=_DNS)
def fwd_step_kernel(xp, w_hh, mask, lengths, hs, cs, y, hc_ws, act_ws, hhat_ws, stats_h, stats_c,
                    bn_wh, bn_wc, bn_bc, rm_h, rv_h, rm_c, rv_c,
                    s, T, B, H, R, NS, NSC, bn_off, bn_S, eps,
                    MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                    BN: tl.constexpr, PROJ: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr,
                    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Step s, hidden units block program_id(0), rows block program_id(1): the gates
    GEMM (K = R in chunks of BK), the fused cell, and the new h (or, with proj_size, the
    pre-projection hc that fwd_proj_kernel projects)."""
    ACC = hs.dtype.element_ty
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, s, T, B, H, BB, BH, HAS_LEN, REVERSE)
    slot = tl.minimum(bn_off + s, bn_S - 1)
    h_prev, m_ptr = step_operands(hs, mask, s, NS, B, R, MASK)
    z = tl.zeros([BB, BH], dtype=ACC)
    a_i, a_f, a_g, a_o = gates_stream(z, z, z, z, h_prev, m_ptr, offs_b, vb, R, H, w_hh, offs_j,
                                      vj, MASK != 0, PREC, BK)
    c_prev = load_tile(cs + step_offset(s % NS, B, H), offs_b, vb, offs_j, vj, H)
    hc, c_new = fwd_cell(a_i, a_f, a_g, a_o, c_prev, xp, s, t, active, offs_b, vb, offs_j, vj, B,
                         H, slot, eps, act_ws, hhat_ws, stats_h, stats_c, bn_wh, bn_wc, bn_bc,
                         rm_h, rv_h, rm_c, rv_c, BN, SAVE)
    a2 = active[:, None]
    store_tile(cs + step_offset((s + 1) % NS, B, H), tl.where(a2, c_new, c_prev), offs_b, vb,
               offs_j, vj, H)
    if PROJ:
        store_tile(hc_ws + step_offset(s % NSC, B, H), hc, offs_b, vb, offs_j, vj, H)
    else:
        h_own = load_tile(h_prev, offs_b, vb, offs_j, vj, R)
        store_tile(hs + step_offset((s + 1) % NS, B, R), tl.where(a2, hc, h_own), offs_b, vb,
                   offs_j, vj, R)
        store_pos(y, tl.where(a2, hc, 0.0), t, offs_b, vb, offs_j, vj, B, R)


@triton.jit(do_not_specialize=_DNS)
def fwd_proj_kernel(w_hr, lengths, hs, y, hc_ws, s, T, B, H, P, NS, NSC,
                    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr,
                    BB: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr):
    """Step s with proj_size: h = hc @ W_hr^T for projection columns block program_id(0)."""
    ACC = hs.dtype.element_ty
    offs_p, vp, offs_b, vb, L, active, t = step_program(lengths, s, T, B, P, BB, BP, HAS_LEN, REVERSE)
    acc = mm_stream(tl.zeros([BB, BP], dtype=ACC), hc_ws + step_offset(s % NSC, B, H), hc_ws,
                    offs_b, vb, H, w_hr, 1, offs_p, vp, H, False, PREC, BK)
    a2 = active[:, None]
    h_prev = hs + step_offset(s % NS, B, P)
    h_own = load_tile(h_prev, offs_b, vb, offs_p, vp, P)
    store_tile(hs + step_offset((s + 1) % NS, B, P), tl.where(a2, acc, h_own), offs_b, vb, offs_p,
               vp, P)
    store_pos(y, tl.where(a2, acc, 0.0), t, offs_b, vb, offs_p, vp, B, P)


# ---- per-step design: backward -------------------------------------------------------


@triton.jit
def transfer(dh, nxt, L, vb, offs_b, offs_r, vr, B, G, R, dhh_ws, w_hh, w_t, mask,
             MASK: tl.constexpr, REVERSE: tl.constexpr, RESIDENT: tl.constexpr,
             PREC: tl.constexpr, BK: tl.constexpr, GP: tl.constexpr):
    """dL/dh_{nxt-1} for columns offs_r: (dhh_nxt @ W_hh) * m_nxt on the rows active at step
    nxt, the carried dh (dL/dh_nxt) on the others.  RESIDENT: W_hh[:, offs_r] is the
    on-chip tile w_t [GP, BR]; else it is streamed from w_hh in chunks of BK."""
    act_n, _ = row_step(L, vb, nxt, REVERSE)
    dn = dhh_ws + step_offset(nxt, B, G)
    z = tl.zeros_like(dh)
    if RESIDENT:
        offs_g = tl.arange(0, GP)
        a = load_tile(dn, offs_b, vb, offs_g, offs_g < G, G).to(w_t.dtype)
        tr = tl.dot(a, w_t, z, input_precision=PREC)
    else:
        tr = mm_stream(z, dn, dn, offs_b, vb, G, w_hh, R, offs_r, vr, 1, False, PREC, BK)
    if MASK == 1:
        tr = tr * load_tile(mask, offs_b, vb, offs_r, vr, R).to(tr.dtype)
    if MASK == 2:
        tr = tr * load_tile(mask + step_offset(nxt, B, R), offs_b, vb, offs_r, vr, R).to(tr.dtype)
    return tl.where(act_n[:, None], tr, dh)


@triton.jit(do_not_specialize=_DNS)
def bwd_step_kernel(dy, dh_n, dc_n, w_hh, w_hr, mask, lengths, cs, act_ws, hhat_ws, stats_h,
                    stats_c, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, dxp, dhh_ws, dhn_ws, dh_buf,
                    dc_buf, dg_h, dg_c, db_c,
                    s, T, B, H, R, bn_off, bn_S, eps,
                    MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                    BN: tl.constexpr, PROJ: tl.constexpr, PREC: tl.constexpr,
                    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """Backward step s for hidden units block program_id(0), rows block program_id(1).

    dL/dh_s arrives as dhn[s] (with proj_size: bwd_transfer_kernel projected it) or is
    computed here from step s + 1's dhh (GEMM with W_hh, K = G); the carried dh / dc
    ring buffers dh_buf / dc_buf [2, B, *] hold it for the finished rows."""
    ACC = cs.dtype.element_ty
    G = 4 * H
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, s, T, B, H, BB, BH, HAS_LEN, REVERSE)
    a2 = active[:, None]
    slot = tl.minimum(bn_off + s, bn_S - 1)
    if PROJ:
        dn = dhn_ws + step_offset(s, B, R)
        dhc = mm_stream(tl.zeros([BB, BH], dtype=ACC), dn, dn, offs_b, vb, R, w_hr, H, offs_j, vj,
                        1, False, PREC, BK)
    else:
        if s < T - 1:
            dh = load_tile(dh_buf + step_offset((s + 1) % 2, B, R), offs_b, vb, offs_j, vj, R)
            dh = transfer(dh, s + 1, L, vb, offs_b, offs_j, vj, B, G, R, dhh_ws, w_hh, w_hh, mask,
                          MASK, REVERSE, False, PREC, BK, 16)
        else:
            dh = load_tile(dh_n, offs_b, vb, offs_j, vj, R).to(ACC)
        store_tile(dh_buf + step_offset(s % 2, B, R), dh, offs_b, vb, offs_j, vj, R)
        dy_t = load_pos(dy, t, offs_b, vb, offs_j, vj, B, R).to(ACC)
        dhc = tl.where(a2, dh + dy_t, 0.0)
    if s < T - 1:
        dc = load_tile(dc_buf + step_offset((s + 1) % 2, B, H), offs_b, vb, offs_j, vj, H)
    else:
        dc = load_tile(dc_n, offs_b, vb, offs_j, vj, H).to(ACC)
    dc = bwd_cell(dhc, dc, s, t, active, offs_b, vb, offs_j, vj, B, H, slot, eps, act_ws,
                  cs + step_offset(s, B, H), cs + step_offset(s + 1, B, H), hhat_ws, stats_h,
                  stats_c, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, dxp, dhh_ws, dg_h, dg_c, db_c,
                  BN)
    store_tile(dc_buf + step_offset(s % 2, B, H), dc, offs_b, vb, offs_j, vj, H)


@triton.jit(do_not_specialize=_DNS)
def bwd_transfer_kernel(dy, dh_n, w_hh, mask, lengths, dhh_ws, dh_buf, dhn_ws, dh0,
                        s, T, B, H, R,
                        MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                        FINAL: tl.constexpr, PREC: tl.constexpr,
                        BB: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr):
    """dL/dh_s for h columns block program_id(0) from step s + 1's dhh.  With proj_size
    (before bwd_step_kernel of step s) it adds dy and stores dhn[s]; FINAL (s = -1) it
    stores dL/dh0."""
    ACC = dhh_ws.dtype.element_ty
    G = 4 * H
    offs_r, vr, offs_b, vb, L, active, t = step_program(lengths, s, T, B, R, BB, BR, HAS_LEN, REVERSE)
    nxt = s + 1
    if nxt < T:
        dh = load_tile(dh_buf + step_offset(nxt % 2, B, R), offs_b, vb, offs_r, vr, R)
        dh = transfer(dh, nxt, L, vb, offs_b, offs_r, vr, B, G, R, dhh_ws, w_hh, w_hh, mask,
                      MASK, REVERSE, False, PREC, BK, 16)
    else:
        dh = load_tile(dh_n, offs_b, vb, offs_r, vr, R).to(ACC)
    if FINAL:
        store_tile(dh0, dh, offs_b, vb, offs_r, vr, R)
    else:
        store_tile(dh_buf + step_offset(s % 2, B, R), dh, offs_b, vb, offs_r, vr, R)
        dy_t = load_pos(dy, t, offs_b, vb, offs_r, vr, B, R).to(ACC)
        store_tile(dhn_ws + step_offset(s, B, R), tl.where(active[:, None], dh + dy_t, 0.0),
                   offs_b, vb, offs_r, vr, R)


# ---- persistent design ---------------------------------------------------------------


@triton.jit(do_not_specialize=_DNS)
def fwd_persistent_kernel(xp, w_hh, w_hr, mask, lengths, hs, cs, y, hc_ws, act_ws, hhat_ws,
                          stats_h, stats_c, bn_wh, bn_wc, bn_bc, rm_h, rv_h, rm_c, rv_c, bar,
                          T, B, H, R, NS, NSC, bn_off, bn_S, eps,
                          MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                          BN: tl.constexpr, PROJ: tl.constexpr, SAVE: tl.constexpr,
                          RESIDENT: tl.constexpr, PREC: tl.constexpr,
                          BB: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr,
                          RP: tl.constexpr, HP: tl.constexpr):
    """The whole forward in one launch.  Program pid owns rows block pid % n_bblk and
    column block c = pid // n_bblk (n_bblk = cdiv(B, BB); persistent_program): hidden units
    [c * BH, (c + 1) * BH) and, with proj_size, projection columns [c * BP, (c + 1) * BP).
    RESIDENT: its W_hh rows (4 tiles [RP, BH]) and W_hr rows ([HP, BP]) are loaded once,
    before the time loop."""
    ACC = hs.dtype.element_ty
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
                                              offs_j, vj, MASK != 0, PREC, BK)
        hc, c_new = fwd_cell(a_i, a_f, a_g, a_o, c, xp, s, t, active, offs_b, vb, offs_j, vj, B,
                             H, slot, eps, act_ws, hhat_ws, stats_h, stats_c, bn_wh, bn_wc, bn_bc,
                             rm_h, rv_h, rm_c, rv_c, BN, SAVE)
        c = tl.where(a2, c_new, c)
        if SAVE:
            store_tile(cs + step_offset(s + 1, B, H), c, offs_b, vb, offs_j, vj, H)
        if PROJ:
            hcp = hc_ws + step_offset(s % NSC, B, H)
            store_tile(hcp, hc, offs_b, vb, offs_j, vj, H)
            grid_sync(bar, (2 * s + 1) * nprog)
            hp = project(tl.zeros([BB, BP], dtype=ACC), hcp, offs_b, vb, H, w_r, offs_hk, vhk, w_hr, 1, offs_p, vp,
                         H, RESIDENT, PREC, BK)
            h_own = load_tile(h_prev, offs_b, vb, offs_p, vp, R)
            store_tile(hs + step_offset((s + 1) % NS, B, R), tl.where(a2, hp, h_own), offs_b, vb,
                       offs_p, vp, R)
            store_pos(y, tl.where(a2, hp, 0.0), t, offs_b, vb, offs_p, vp, B, R)
            grid_sync(bar, (2 * s + 2) * nprog)
        else:
            h_own = load_tile(h_prev, offs_b, vb, offs_j, vj, R)
            store_tile(hs + step_offset((s + 1) % NS, B, R), tl.where(a2, hc, h_own), offs_b, vb,
                       offs_j, vj, R)
            store_pos(y, tl.where(a2, hc, 0.0), t, offs_b, vb, offs_j, vj, B, R)
            grid_sync(bar, (s + 1) * nprog)
    store_tile(cs + step_offset(T % NS, B, H), c, offs_b, vb, offs_j, vj, H)
    grid_reset(bar, nprog)


@triton.jit(do_not_specialize=_DNS)
def bwd_persistent_kernel(dy, dh_n, dc_n, w_hh, w_hr, mask, lengths, cs, act_ws, hhat_ws,
                          stats_h, stats_c, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, dxp, dhh_ws,
                          dhn_ws, dh0, dc0, dg_h, dg_c, db_c, bar,
                          T, B, H, R, bn_off, bn_S, eps,
                          MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                          BN: tl.constexpr, PROJ: tl.constexpr, RESIDENT: tl.constexpr,
                          PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
                          BP: tl.constexpr, BK: tl.constexpr, GP: tl.constexpr, PP: tl.constexpr):
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
            dh = transfer(dh, s + 1, L, vb, offs_b, offs_r, vr, B, G, R, dhh_ws, w_hh, w_t, mask,
                          MASK, REVERSE, RESIDENT, PREC, BK, GP)
        dy_t = load_pos(dy, t, offs_b, vb, offs_r, vr, B, R).to(ACC)
        if PROJ:
            dn = dhn_ws + step_offset(s, B, R)
            store_tile(dn, tl.where(a2, dh + dy_t, 0.0), offs_b, vb, offs_r, vr, R)
            grid_sync(bar, (2 * it + 1) * nprog)
            dhc = project(tl.zeros([BB, BH], dtype=ACC), dn, offs_b, vb, R, w_p, offs_q, vq, w_hr, H, offs_j, vj, 1,
                          RESIDENT, PREC, BK)
        else:
            dhc = tl.where(a2, dh + dy_t, 0.0)
        dc = bwd_cell(dhc, dc, s, t, active, offs_b, vb, offs_j, vj, B, H, slot, eps, act_ws,
                      cs + step_offset(s, B, H), cs + step_offset(s + 1, B, H), hhat_ws, stats_h,
                      stats_c, bn_wh, bn_wc, bn_bc, rv_h, rm_c, rv_c, dxp, dhh_ws, dg_h, dg_c,
                      db_c, BN)
        if PROJ:
            grid_sync(bar, (2 * it + 2) * nprog)
        else:
            grid_sync(bar, (it + 1) * nprog)
    dh = transfer(dh, 0, L, vb, offs_b, offs_r, vr, B, G, R, dhh_ws, w_hh, w_t, mask, MASK,
                  REVERSE, RESIDENT, PREC, BK, GP)
    store_tile(dh0, dh, offs_b, vb, offs_r, vr, R)
    store_tile(dc0, dc, offs_b, vb, offs_j, vj, H)
    grid_reset(bar, nprog)
