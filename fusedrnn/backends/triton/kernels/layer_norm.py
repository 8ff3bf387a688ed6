"""Layer norm on the per-step design: whole-row kernels (a row's statistics span every column block).

Dimension letters: T steps, B batch, H hidden, P projection (proj_size), R = P or H (the
width of h), G = 4H gate columns in the order i, f, g, o.  s is the step a launch runs.

Forward step s: step.fwd_step_kernel stores the raw W_hh h m and each GEMM block's per-row
(mean, M2), then fwd_ln_kernel normalises; backward step s: step.bwd_transfer_kernel stores
dL/dh~_s, then bwd_ln_kernel.  Grid: (row blocks,); each program walks its rows' columns in
BH-wide blocks.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    DNS,
    ZO_NONE,
    emit_h,
    load_tile,
    load_zone,
    mm_stream,
    row_program,
    sigmoid,
    step_offset,
    store_gates,
    store_tile,
    tanh,
    zone_mix,
)


@triton.jit
def merged_stats(part, offs_b, vb, H, eps, stats, s, B, BB: tl.constexpr, BG: tl.constexpr, NP: tl.constexpr,
                 NG: tl.constexpr):
    """Each row's (mean, rstd) over its G = NG * H gate values (NG gate blocks: the LSTM's 4,
    the GRU's 3), from the per-block (mean, M2) that the GEMM programs (BG hidden units each:
    NG x min(BG, units left) values) stored to part [n_blocks, 2, B]: Chan's merge, mean =
    sum n_k m_k / G, M2 = sum M2_k + n_k (m_k - mean)^2, reading NP blocks per load.  Stored to
    stats[s, 0 | 1, rows]."""
    G = NG * H
    nblk = tl.cdiv(H, BG)
    mean = tl.zeros([BB], dtype=stats.dtype.element_ty)
    for k0 in range(0, nblk, NP):
        k = k0 + tl.arange(0, NP)
        n_k = NG * tl.minimum(BG, H - k * BG).to(mean.dtype)
        m_k = tl.load(part + k[None, :].to(tl.int64) * 2 * B + offs_b[:, None], mask=vb[:, None] & (k < nblk)[None, :],
                      other=0.0)
        mean += tl.sum(tl.where((k < nblk)[None, :], n_k[None, :] * m_k, 0.0), axis=1)
    mean = mean / G
    m2 = tl.zeros([BB], dtype=mean.dtype)
    for k0 in range(0, nblk, NP):
        k = k0 + tl.arange(0, NP)
        vk = (k < nblk)[None, :]
        n_k = NG * tl.minimum(BG, H - k * BG).to(mean.dtype)
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


@triton.jit(do_not_specialize=DNS)
def fwd_ln_kernel(xp, lengths, hs, cs, y, hc_ws, act_ws, hhat_ws, stats_h, stats_c, norm_wh, norm_wc, norm_bc,
                  zc, zh, ln_part, s, T, B, H, R, NS, NSC, eps,
                  HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, PROJ: tl.constexpr, SAVE: tl.constexpr,
                  ZO: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BG: tl.constexpr, NP: tl.constexpr):
    """Layer norm, step s, after fwd_step_kernel stored the raw W_hh h m and its per-block
    statistics: rows block program_id(0), every column, in two passes over BH-wide blocks:
    LN_h statistics merged from the GEMM programs' (merged_stats); x_hat over the raw values,
    the gates, c~ (in the next cell-state slot) and LN_c's statistics merged block by block;
    then the output o * tanh(LN_c(c~)), zoneout and the new state.  norm_wh, norm_wc, norm_bc:
    LN_h's gain, LN_c's gain and bias (LN_h's bias is in xp).  stats_h / stats_c [T, 2, B]:
    each row's mean and 1 / sqrt(var + eps)."""
    ACC = cs.dtype.element_ty
    G = 4 * H
    offs_b, vb, L, active, t = row_program(lengths, s, T, B, BB, HAS_LEN, REVERSE)
    a2 = active[:, None]
    raw = hhat_ws + step_offset(s % NSC, B, G)
    c_prev_p = cs + step_offset(s % NS, B, H)
    c_next_p = cs + step_offset((s + 1) % NS, B, H)
    mean_h, rstd_h = merged_stats(ln_part, offs_b, vb, H, eps, stats_h, s, B, BB, BG, NP, 4)
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
        i = sigmoid(_ln_gate(raw, offs_b, vb, offs_j, vj, G, mean_h, rstd_h, norm_wh)
                    + tl.load(xr, mask=m2, other=0.0).to(ACC))
        g = tanh(_ln_gate(raw, offs_b, vb, 2 * H + offs_j, vj, G, mean_h, rstd_h, norm_wh)
                 + tl.load(xr + 2 * H, mask=m2, other=0.0).to(ACC))
        if SAVE:
            tl.store(ar, i, mask=m2)
            tl.store(ar + 2 * H, g, mask=m2)
        ig = i * g
        f = sigmoid(_ln_gate(raw, offs_b, vb, H + offs_j, vj, G, mean_h, rstd_h, norm_wh)
                    + tl.load(xr + H, mask=m2, other=0.0).to(ACC))
        if SAVE:
            tl.store(ar + H, f, mask=m2)
        c_til = f * load_tile(c_prev_p, offs_b, vb, offs_j, vj, H) + ig
        store_tile(c_next_p, c_til, offs_b, vb, offs_j, vj, H)
        cn, c_mean, c_m2 = merge_block(cn, c_mean, c_m2, c_til, m2, tl.sum(vj.to(ACC), axis=0))
        # x_hat of the o gate (the output pass recomputes o from it when nothing is saved)
        o = sigmoid(_ln_gate(raw, offs_b, vb, 3 * H + offs_j, vj, G, mean_h, rstd_h, norm_wh)
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
        gamma = tl.load(norm_wc + offs_j, mask=vj, other=0.0).to(ACC)
        beta = tl.load(norm_bc + offs_j, mask=vj, other=0.0).to(ACC)
        c_hat = (c_til - mean_c[:, None]) * rstd_c[:, None] * gamma[None, :] + beta[None, :]
        if SAVE:  # the saved gate
            o = load_tile(act_ws + step_offset(s, B, G) + 3 * H, offs_b, vb, offs_j, vj, G)
        else:  # recomputed from its x_hat
            xo = load_tile(raw, offs_b, vb, 3 * H + offs_j, vj, G)
            xr = xp + t[:, None].to(tl.int64) * B * G + offs_b[:, None] * G + 3 * H + offs_j[None, :]
            o = sigmoid(xo * tl.load(norm_wh + 3 * H + offs_j, mask=vj, other=0.0).to(ACC)[None, :]
                        + tl.load(xr, mask=m2, other=0.0).to(ACC))
        hc = o * tanh(c_hat)
        c_new = c_til
        if ZO != ZO_NONE:
            c_new = zone_mix(load_zone(zc, s, offs_b, vb, offs_j, vj, B, H, ACC, ZO), c_prev, c_til)
        store_tile(c_next_p, tl.where(a2, c_new, c_prev), offs_b, vb, offs_j, vj, H)
        if PROJ:
            store_tile(hc_ws + step_offset(s % NSC, B, H), hc, offs_b, vb, offs_j, vj, H)
        else:
            emit_h(hc, hs + step_offset(s % NS, B, R), hs, y, zh, s, t, a2, offs_b, vb, offs_j, vj, B, R, NS, ZO)


@triton.jit
def _ln_c_bwd(act_ws, cs, dhn_ws, dhh_ws, w_hr, s, offs_b, vb, offs_j, vj, B, H, R, mean_c, rstd_c, norm_wc, norm_bc,
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
    gamma = tl.load(norm_wc + offs_j, mask=vj, other=0.0).to(i.dtype)
    tc = tanh(xc * gamma[None, :] + tl.load(norm_bc + offs_j, mask=vj, other=0.0).to(i.dtype)[None, :])
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


@triton.jit(do_not_specialize=DNS)
def bwd_ln_kernel(dc_n, w_hr, lengths, cs, act_ws, hhat_ws, stats_h, stats_c, norm_wh, norm_wc, norm_bc, zc, dxp,
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
    offs_b, vb, L, active, t = row_program(lengths, s, T, B, BB, HAS_LEN, REVERSE)
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
            act_ws, cs, dhn_ws, dhh_ws, w_hr, s, offs_b, vb, offs_j, vj, B, H, R, mean_c, rstd_c, norm_wc, norm_bc,
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
            act_ws, cs, dhn_ws, dhh_ws, w_hr, s, offs_b, vb, offs_j, vj, B, H, R, mean_c, rstd_c, norm_wc, norm_bc,
            False, PROJ, PREC, BB, BH, BK, KST)
        dtil = rstd_c[:, None] * (dchat * gamma[None, :] - m1[:, None] - xc * m2[:, None])
        if s < T - 1:
            dc = load_tile(dc_buf + step_offset((s + 1) % 2, B, H), offs_b, vb, offs_j, vj, H)
        else:
            dc = load_tile(dc_n, offs_b, vb, offs_j, vj, H).to(ACC)
        if ZO != ZO_NONE:  # as in bwd_cell: (1 - z) of dL/dc_s reaches c~, z of it c_{s-1}
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
        n1, n2 = _ln_h_sums(dp_i, n1, n2, hh, norm_wh, dg_h, prow, offs_b, vb, offs_j, vj, G)
        n1, n2 = _ln_h_sums(dp_f, n1, n2, hh, norm_wh, dg_h, prow, offs_b, vb, H + offs_j, vj, G)
        n1, n2 = _ln_h_sums(dp_g, n1, n2, hh, norm_wh, dg_h, prow, offs_b, vb, 2 * H + offs_j, vj, G)
        n1, n2 = _ln_h_sums(dp_o, n1, n2, hh, norm_wh, dg_h, prow, offs_b, vb, 3 * H + offs_j, vj, G)
    n1 = n1 / G
    n2 = n2 / G
    tl.debug_barrier()
    for j0 in range(0, G, BH):  # pass 3: LN_h's backward: dL/d(W_hh h m), in place
        col = j0 + tl.arange(0, BH)
        vc = col < G
        dp = load_tile(dd, offs_b, vb, col, vc, G)
        xh = load_tile(hh, offs_b, vb, col, vc, G)
        dxh = dp * tl.load(norm_wh + col, mask=vc, other=0.0).to(ACC)[None, :]
        store_tile(dd, tl.where(a2, rstd_h[:, None] * (dxh - n1[:, None] - xh * n2[:, None]), 0.0), offs_b, vb,
                   col, vc, G)
