"""The per-step design: one fused launch per step (two with proj_size).

Dimension letters: T steps, B batch, H hidden, P projection (proj_size), R = P or H (the
width of h), G = 4H gate columns in the order i, f, g, o.  s is the step a launch runs.

The host loops over the steps; kernel boundaries synchronise.  Grid: (column blocks, row
blocks).  Works for every shape and runs multi-program in the interpreter.

Forward: fwd_step_kernel (the gates GEMM and the cell; with layer norm only the GEMM, then
layer_norm.fwd_ln_kernel) and, with proj_size, fwd_proj_kernel.  Backward: bwd_step_kernel
(with layer norm layer_norm.bwd_ln_kernel instead) and bwd_transfer_kernel (dL/dh through
W_hh with proj_size or layer norm, and dL/dh0 after the last step).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    DNS,
    MASK_NONE,
    NORM_LAYER,
    ZO_NONE,
    bwd_cell,
    emit_h,
    fwd_cell,
    gates_stream,
    load_pos,
    load_tile,
    load_zone,
    mm_stream,
    output_grad,
    step_offset,
    step_operands,
    step_program,
    store_tile,
    transfer,
    zone_mix,
)


# ---- forward ------------------------------------------------------------------------


@triton.jit(do_not_specialize=DNS)
def fwd_step_kernel(xp, w_hh, mask, lengths, hs, cs, y, hc_ws, act_ws, hhat_ws, stats_h, stats_c,
                    norm_wh, norm_wc, norm_bc, rm_h, rv_h, rm_c, rv_c, zc, zh, ln_part,
                    s, T, B, H, R, NS, NSC, bn_off, bn_S, eps,
                    MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                    BN: tl.constexpr, PROJ: tl.constexpr, SAVE: tl.constexpr, ZO: tl.constexpr,
                    PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """Step s, hidden units block program_id(0), rows block program_id(1): the gates
    GEMM (K = R in chunks of BK), the fused cell, zoneout, and the new h (or, with
    proj_size, the pre-projection hc that fwd_proj_kernel projects).  Layer norm (BN ==
    NORM_LAYER): the GEMM only, its raw W_hh h m stored to hhat_ws slot s % NSC for
    layer_norm.fwd_ln_kernel, which normalises whole rows, and each row's (mean, M2) over this
    block's 4 x BH gate columns to ln_part [n_col_blocks, 2, B] (merged there by Chan's
    formula)."""
    ACC = cs.dtype.element_ty
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, s, T, B, H, BB, BH, HAS_LEN, REVERSE)
    slot = tl.minimum(bn_off + s, bn_S - 1)
    h_prev, m_ptr = step_operands(hs, mask, s, NS, B, R, MASK)
    z = tl.zeros([BB, BH], dtype=ACC)
    a_i, a_f, a_g, a_o = gates_stream(z, z, z, z, h_prev, m_ptr, offs_b, vb, R, H, w_hh, offs_j,
                                      vj, MASK != MASK_NONE, PREC, BK, KST)
    if BN == NORM_LAYER:
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
                             H, slot, eps, act_ws, hhat_ws, stats_h, stats_c, norm_wh, norm_wc, norm_bc,
                             rm_h, rv_h, rm_c, rv_c, BN, SAVE)
        if ZO != ZO_NONE:
            c_new = zone_mix(load_zone(zc, s, offs_b, vb, offs_j, vj, B, H, ACC, ZO), c_prev, c_new)
        a2 = active[:, None]
        store_tile(cs + step_offset((s + 1) % NS, B, H), tl.where(a2, c_new, c_prev), offs_b, vb,
                   offs_j, vj, H)
        if PROJ:
            store_tile(hc_ws + step_offset(s % NSC, B, H), hc, offs_b, vb, offs_j, vj, H)
        else:
            emit_h(hc, h_prev, hs, y, zh, s, t, a2, offs_b, vb, offs_j, vj, B, R, NS, ZO)


@triton.jit(do_not_specialize=DNS)
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


# ---- backward -----------------------------------------------------------------------


@triton.jit(do_not_specialize=DNS)
def bwd_step_kernel(dy, dh_n, dc_n, w_hh, w_hr, mask, lengths, cs, act_ws, hhat_ws, stats_h,
                    stats_c, norm_wh, norm_wc, norm_bc, rv_h, rm_c, rv_c, zc, zh, dxp, dhh_ws, dhn_ws, dh_buf,
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
                  stats_c, norm_wh, norm_wc, norm_bc, rv_h, rm_c, rv_c, dxp, dhh_ws, dg_h, dg_c, db_c, zc,
                  BN, ZO)
    store_tile(dc_buf + step_offset(s % 2, B, H), dc, offs_b, vb, offs_j, vj, H)


@triton.jit(do_not_specialize=DNS)
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
