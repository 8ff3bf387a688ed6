"""The persistent design: one launch runs the whole time loop, a grid barrier per step.

Dimension letters: T steps, B batch, H hidden, P projection (proj_size), R = P or H (the
width of h), G = 4H gate columns in the order i, f, g, o.  s is the processing step.

Program p owns a block of hidden units (and of projection columns) for a block of rows (all
rows with batch norm, so batch statistics stay in one program), keeps its W_hh / W_hr slices
on chip across steps (RESIDENT) or streams them from L2, keeps c (and, backward, dh / dc) in
registers, and exchanges h through global memory with one grid barrier per step (two with
proj_size).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    DNS,
    MASK_NONE,
    ZO_NONE,
    bwd_cell,
    emit_h,
    fwd_cell,
    gates_stream,
    grid_reset,
    grid_sync,
    load_a,
    load_pos,
    load_tile,
    load_w,
    load_zone,
    output_grad,
    persistent_program,
    project,
    row_step,
    step_offset,
    step_operands,
    store_tile,
    transfer,
    zone_mix,
)


@triton.jit(do_not_specialize=DNS)
def fwd_persistent_kernel(xp, w_hh, w_hr, mask, lengths, hs, cs, y, hc_ws, act_ws, hhat_ws,
                          stats_h, stats_c, norm_wh, norm_wc, norm_bc, rm_h, rv_h, rm_c, rv_c, zc, zh, bar,
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
            a = load_a(h_prev, m_ptr, offs_b, vb, offs_k, vk, R, MASK != MASK_NONE).to(WT)
            a_i = tl.dot(a, w_i, z, input_precision=PREC)
            a_f = tl.dot(a, w_f, z, input_precision=PREC)
            a_g = tl.dot(a, w_g, z, input_precision=PREC)
            a_o = tl.dot(a, w_o, z, input_precision=PREC)
        else:
            a_i, a_f, a_g, a_o = gates_stream(z, z, z, z, h_prev, m_ptr, offs_b, vb, R, H, w_hh,
                                              offs_j, vj, MASK != MASK_NONE, PREC, BK, KST)
        hc, c_new = fwd_cell(a_i, a_f, a_g, a_o, c, xp, s, t, active, offs_b, vb, offs_j, vj, B,
                             H, slot, eps, act_ws, hhat_ws, stats_h, stats_c, norm_wh, norm_wc, norm_bc,
                             rm_h, rv_h, rm_c, rv_c, BN, SAVE)
        if ZO != ZO_NONE:
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


@triton.jit(do_not_specialize=DNS)
def bwd_persistent_kernel(dy, dh_n, dc_n, w_hh, w_hr, mask, lengths, cs, act_ws, hhat_ws,
                          stats_h, stats_c, norm_wh, norm_wc, norm_bc, rv_h, rm_c, rv_c, zc, zh, dxp, dhh_ws,
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
                      stats_c, norm_wh, norm_wc, norm_bc, rv_h, rm_c, rv_c, dxp, dhh_ws, dg_h, dg_c,
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
