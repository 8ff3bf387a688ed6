"""The GRU's per-step design: one fused launch per step, forward and backward.

Dimension letters: T steps, B batch, H hidden, G = 3H gate columns in torch's order r, z, n.
s is the step a launch runs; t the time position a row reads / writes at step s.

The GRU's step (b_hn inside the reset product, as torch):

    [g_r, g_z, g_n] = N_h((h_{s-1} * m_s) W_hh^T) + b_hh      (N_h: batch norm, or none)
    r = sigmoid(x_r + g_r);  z = sigmoid(x_z + g_z);  n = tanh(x_n + r * g_n)
    h~ = (1 - z) * n + z * h_{s-1}                            (then zoneout, as the LSTM's h)

Forward (fwd_gru_kernel): the three gate blocks' GEMM (K = H in chunks of BK), batch norm
over the program's rows (all B rows in one program), the gates and the update; emit_h does
zoneout, holds finished rows and stores h.  Saved for backward: the gates r, z, n [T, B, G],
the reset product's operand g_n [T, B, H] (gn_ws) and N_h's x_hat.

Backward (bwd_gru_kernel, step s from T - 1 down): dL/dh_s from step s + 1 (transfer: the
W_hh GEMM over K = G, the mask, zoneout's share), plus what step s + 1's update gate passed
straight to h_s (dz_buf: dL/dh~_{s+1} * z_{s+1}); then the gate gradients, dxp, dhh (through
batch norm's backward) and per-program partial sums of dL/db_hh.  gru_final_kernel: dL/dh0.
Grid of every kernel: (hidden-unit blocks of BH, row blocks of BB).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (DNS, NORM_NONE, _bn_h_bwd, _bn_h_fwd, emit_h, load_a, load_pos, load_tile, load_w, output_grad,
                     sigmoid, step_offset, step_operands, step_program, store_tile, tanh, transfer)


@triton.jit
def gru_gates_stream(acc_r, acc_z, acc_n, a_ptr, m_ptr, offs_b, vb, H, w_hh, offs_j, vj,
                     MASKED: tl.constexpr, PREC: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """The three gate blocks of (h * m) @ W_hh^T for hidden units offs_j: one operand chunk,
    three dots.  W_hh is [G, H]; gate k of unit j is row k * H + j.  Pipelined KST deep."""
    for k0 in tl.range(0, H, BK, num_stages=KST):
        offs_k = k0 + tl.arange(0, BK)
        vk = offs_k < H
        a = load_a(a_ptr, m_ptr, offs_b, vb, offs_k, vk, H, MASKED).to(w_hh.dtype.element_ty)
        acc_r = tl.dot(a, load_w(w_hh, offs_k, vk, 1, offs_j, vj, H), acc_r, input_precision=PREC)
        acc_z = tl.dot(a, load_w(w_hh + H * H, offs_k, vk, 1, offs_j, vj, H), acc_z, input_precision=PREC)
        acc_n = tl.dot(a, load_w(w_hh + 2 * H * H, offs_k, vk, 1, offs_j, vj, H), acc_n, input_precision=PREC)
    return acc_r, acc_z, acc_n


@triton.jit(do_not_specialize=DNS)
def fwd_gru_kernel(xp, w_hh, b_hh, mask, lengths, hs, y, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rm_h, rv_h, zh,
                   s, T, B, H, NS, bn_off, bn_S, eps,
                   MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, BN: tl.constexpr,
                   SAVE: tl.constexpr, ZO: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
                   BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """Step s, hidden units block program_id(0), rows block program_id(1)."""
    ACC = gn_ws.dtype.element_ty
    G = 3 * H
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, s, T, B, H, BB, BH, HAS_LEN, REVERSE)
    a2 = active[:, None]
    m2 = vb[:, None] & vj[None, :]
    slot = tl.minimum(bn_off + s, bn_S - 1)
    h_prev, m_ptr = step_operands(hs, mask, s, NS, B, H, MASK)
    zero = tl.zeros([BB, BH], dtype=ACC)
    g_r, g_z, g_n = gru_gates_stream(zero, zero, zero, h_prev, m_ptr, offs_b, vb, H, w_hh, offs_j, vj,
                                     MASK != 0, PREC, BK, KST)
    rows = offs_b[:, None] * G + offs_j[None, :]
    if BN != NORM_NONE:
        n_rows = tl.maximum(tl.sum(active.to(ACC), axis=0), 1.0)
        x_r, g_r = _bn_h_fwd(g_r, a2, n_rows, offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h, rv_h, eps, BN)
        x_z, g_z = _bn_h_fwd(g_z, a2, n_rows, H + offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h, rv_h, eps, BN)
        x_n, g_n = _bn_h_fwd(g_n, a2, n_rows, 2 * H + offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h, rv_h, eps, BN)
        if SAVE:
            hp = hhat_ws + step_offset(s, B, G) + rows
            tl.store(hp, x_r, mask=m2)
            tl.store(hp + H, x_z, mask=m2)
            tl.store(hp + 2 * H, x_n, mask=m2)
    if HAS_BIAS:
        g_r += tl.load(b_hh + offs_j, mask=vj, other=0.0).to(ACC)[None, :]
        g_z += tl.load(b_hh + H + offs_j, mask=vj, other=0.0).to(ACC)[None, :]
        g_n += tl.load(b_hh + 2 * H + offs_j, mask=vj, other=0.0).to(ACC)[None, :]
    xr = xp + t[:, None].to(tl.int64) * B * G + rows
    r = sigmoid(g_r + tl.load(xr, mask=m2, other=0.0).to(ACC))
    z = sigmoid(g_z + tl.load(xr + H, mask=m2, other=0.0).to(ACC))
    n = tanh(tl.load(xr + 2 * H, mask=m2, other=0.0).to(ACC) + r * g_n)
    h_own = load_tile(h_prev, offs_b, vb, offs_j, vj, H).to(ACC)
    if SAVE:
        gp = gates_ws + step_offset(s, B, G) + rows
        tl.store(gp, tl.where(a2, r, 0.0), mask=m2)
        tl.store(gp + H, tl.where(a2, z, 0.0), mask=m2)
        tl.store(gp + 2 * H, tl.where(a2, n, 0.0), mask=m2)
        store_tile(gn_ws + step_offset(s, B, H), tl.where(a2, g_n, 0.0), offs_b, vb, offs_j, vj, H)
    emit_h((1.0 - z) * n + z * h_own, h_prev, hs, y, zh, s, t, a2, offs_b, vb, offs_j, vj, B, H, NS, ZO)


@triton.jit
def _carried(dh_n, dh_buf, dz_buf, w_hh, mask, zh, dhh_ws, nxt, L, vb, offs_b, offs_j, vj, T, B, H,
             MASK: tl.constexpr, REVERSE: tl.constexpr, ZO: tl.constexpr, PREC: tl.constexpr,
             BK: tl.constexpr, KST: tl.constexpr):
    """dL/dh_{nxt-1} for columns offs_j: from step nxt (< T) through W_hh (transfer: the mask,
    zoneout's share, held on the rows that step did not run) plus the update gate's direct
    share dz_buf (zero on those rows); dL/dh_T = dh_n."""
    ACC = dh_buf.dtype.element_ty
    if nxt < T:
        dh = load_tile(dh_buf + step_offset(nxt % 2, B, H), offs_b, vb, offs_j, vj, H)
        dh = transfer(dh, nxt, L, vb, offs_b, offs_j, vj, B, 3 * H, H, dhh_ws, w_hh, w_hh, mask, zh,
                      MASK, REVERSE, False, ZO, PREC, BK, 16, KST)
        dh += load_tile(dz_buf + step_offset(nxt % 2, B, H), offs_b, vb, offs_j, vj, H)
    else:
        dh = load_tile(dh_n, offs_b, vb, offs_j, vj, H).to(ACC)
    return dh


@triton.jit(do_not_specialize=DNS)
def bwd_gru_kernel(dy, dh_n, w_hh, mask, lengths, hs, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rv_h, zh,
                   dxp, dhh_ws, dh_buf, dz_buf, dg_h, db_part,
                   s, T, B, H, bn_off, bn_S, eps,
                   MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, BN: tl.constexpr,
                   ZO: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
                   BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """Backward step s for hidden units block program_id(0), rows block program_id(1).  The
    rings dh_buf / dz_buf [2, B, H] carry dL/dh_s (dy included) and dL/dh~_s * z_s to step
    s - 1; db_part [T * row blocks, G] takes this program's sum of dL/db_hh over its rows."""
    ACC = dh_buf.dtype.element_ty
    G = 3 * H
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, s, T, B, H, BB, BH, HAS_LEN, REVERSE)
    a2 = active[:, None]
    m2 = vb[:, None] & vj[None, :]
    slot = tl.minimum(bn_off + s, bn_S - 1)
    dh = _carried(dh_n, dh_buf, dz_buf, w_hh, mask, zh, dhh_ws, s + 1, L, vb, offs_b, offs_j, vj, T, B, H,
                  MASK, REVERSE, ZO, PREC, BK, KST)
    dy_t = load_pos(dy, t, offs_b, vb, offs_j, vj, B, H).to(ACC)
    dh, dht = output_grad(dh, dy_t, a2, zh, s, offs_b, vb, offs_j, vj, B, H, ZO)
    store_tile(dh_buf + step_offset(s % 2, B, H), dh, offs_b, vb, offs_j, vj, H)
    rows = offs_b[:, None] * G + offs_j[None, :]
    gp = gates_ws + step_offset(s, B, G) + rows
    r = tl.load(gp, mask=m2, other=0.0)
    z = tl.load(gp + H, mask=m2, other=0.0)
    n = tl.load(gp + 2 * H, mask=m2, other=0.0)
    g_n = load_tile(gn_ws + step_offset(s, B, H), offs_b, vb, offs_j, vj, H)
    h_own = load_tile(hs + step_offset(s, B, H), offs_b, vb, offs_j, vj, H).to(ACC)
    store_tile(dz_buf + step_offset(s % 2, B, H), tl.where(a2, dht * z, 0.0), offs_b, vb, offs_j, vj, H)
    d_n = tl.where(a2, dht * (1.0 - z) * (1.0 - n * n), 0.0)
    d_z = tl.where(a2, dht * (h_own - n) * z * (1.0 - z), 0.0)
    d_r = tl.where(a2, d_n * g_n * r * (1.0 - r), 0.0)
    d_gn = d_n * r
    xr = dxp + t[:, None].to(tl.int64) * B * G + rows
    ty = dxp.dtype.element_ty
    tl.store(xr, d_r.to(ty), mask=m2)
    tl.store(xr + H, d_z.to(ty), mask=m2)
    tl.store(xr + 2 * H, d_n.to(ty), mask=m2)
    if HAS_BIAS:
        bp = db_part + (tl.cast(s, tl.int64) * tl.num_programs(1) + tl.program_id(1)) * G + offs_j
        tl.store(bp, tl.sum(d_r, axis=0), mask=vj)
        tl.store(bp + H, tl.sum(d_z, axis=0), mask=vj)
        tl.store(bp + 2 * H, tl.sum(d_gn, axis=0), mask=vj)
    if BN != NORM_NONE:
        n_rows = tl.maximum(tl.sum(active.to(ACC), axis=0), 1.0)
        d_r = _bn_h_bwd(d_r, s, slot, offs_b, vb, offs_j, vj, B, G, a2, n_rows, hhat_ws, stats_h, rv_h, norm_wh,
                        dg_h, eps, BN)
        d_z = _bn_h_bwd(d_z, s, slot, offs_b, vb, H + offs_j, vj, B, G, a2, n_rows, hhat_ws, stats_h, rv_h,
                        norm_wh, dg_h, eps, BN)
        d_gn = _bn_h_bwd(d_gn, s, slot, offs_b, vb, 2 * H + offs_j, vj, B, G, a2, n_rows, hhat_ws, stats_h, rv_h,
                         norm_wh, dg_h, eps, BN)
    hp = dhh_ws + step_offset(s, B, G) + rows
    tl.store(hp, tl.where(a2, d_r, 0.0).to(dhh_ws.dtype.element_ty), mask=m2)
    tl.store(hp + H, tl.where(a2, d_z, 0.0).to(dhh_ws.dtype.element_ty), mask=m2)
    tl.store(hp + 2 * H, tl.where(a2, d_gn, 0.0).to(dhh_ws.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=DNS)
def gru_final_kernel(dh_n, w_hh, mask, lengths, zh, dhh_ws, dh_buf, dz_buf, dh0, T, B, H,
                     MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, ZO: tl.constexpr,
                     PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """dL/dh0 for hidden units block program_id(0), rows block program_id(1), after step 0."""
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, 0, T, B, H, BB, BH, HAS_LEN, REVERSE)
    dh = _carried(dh_n, dh_buf, dz_buf, w_hh, mask, zh, dhh_ws, 0, L, vb, offs_b, offs_j, vj, T, B, H,
                  MASK, REVERSE, ZO, PREC, BK, KST)
    store_tile(dh0, dh, offs_b, vb, offs_j, vj, H)
