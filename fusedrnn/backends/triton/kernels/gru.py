"""The GRU's kernels: the per-step design (one fused launch per step) and the persistent
design (one launch for the whole sequence, a grid barrier per step), forward and backward.

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

Layer norm (BN == NORM_LAYER; haste's LayerNormGRU: LN_h over each row's 3H values of
(h * m) W_hh^T): its statistics span every column block, so, as the LSTM's, a step is two
launches: fwd_gru_kernel stores the raw GEMM (hhat_ws slot s % NSC) and each block's per-row
(mean, M2) (ln_part), then gru_ln_fwd_kernel (whole rows) merges them, normalises in place
(x_hat, kept for backward) and runs the gates and the update.  Backward: bwd_gru_kernel stores
the gradient wrt LN_h's output in dhh_ws[s], then gru_ln_bwd_kernel (whole rows) takes it
through LN_h's backward in place and stores the gain's gradient per row block.

Backward (bwd_gru_kernel, step s from T - 1 down): dL/dh_s from step s + 1 (transfer: the
W_hh GEMM over K = G, the mask, zoneout's share), plus what step s + 1's update gate passed
straight to h_s (dz_buf: dL/dh~_{s+1} * z_{s+1}); then the gate gradients, dxp, dhh (through
batch norm's backward) and per-program partial sums of dL/db_hh.  gru_final_kernel: dL/dh0.
Grid of every per-step kernel: (hidden-unit blocks of BH, row blocks of BB).

Persistent (fwd_gru_persistent_kernel, bwd_gru_persistent_kernel; config.py decides where
the grid fits, as for the LSTM, and never with layer norm): each program owns the same rows
and hidden units for every step and runs the per-step kernels' step bodies (_gru_cell,
_gru_bwd_cell) in a time loop, its W_hh slices on chip (RESIDENT) or streamed.  h goes to the
other programs through hs, dL/d(N_h input) through dhh_ws, each behind one grid barrier per
step; the backward keeps dL/dh_s and the update gate's share in registers.  Grid: (row
blocks x hidden-unit blocks,).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (DNS, NORM_LAYER, NORM_NONE, _bn_h_bwd, _bn_h_fwd, emit_h, grid_reset, grid_sync, load_a,
                     load_pos, load_tile, load_w, output_grad, persistent_program, row_program, row_step, sigmoid,
                     step_offset, step_operands, step_program, store_tile, tanh, transfer)
from .layer_norm import _ln_gate, merge_block, merged_stats


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
                   ln_part, s, T, B, H, NS, NSC, bn_off, bn_S, eps,
                   MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, BN: tl.constexpr,
                   SAVE: tl.constexpr, ZO: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
                   BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """Step s, hidden units block program_id(0), rows block program_id(1)."""
    ACC = gn_ws.dtype.element_ty
    G = 3 * H
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, s, T, B, H, BB, BH, HAS_LEN, REVERSE)
    m2 = vb[:, None] & vj[None, :]
    slot = tl.minimum(bn_off + s, bn_S - 1)
    h_prev, m_ptr = step_operands(hs, mask, s, NS, B, H, MASK)
    zero = tl.zeros([BB, BH], dtype=ACC)
    g_r, g_z, g_n = gru_gates_stream(zero, zero, zero, h_prev, m_ptr, offs_b, vb, H, w_hh, offs_j, vj,
                                     MASK != 0, PREC, BK, KST)
    rows = offs_b[:, None] * G + offs_j[None, :]
    if BN == NORM_LAYER:  # the raw GEMM and its per-row (mean, M2) over this block: gru_ln_fwd_kernel goes on
        raw = hhat_ws + step_offset(s % NSC, B, G) + rows
        tl.store(raw, g_r, mask=m2)
        tl.store(raw + H, g_z, mask=m2)
        tl.store(raw + 2 * H, g_n, mask=m2)
        zero_n = tl.zeros([BB], dtype=ACC)
        nb = tl.sum(vj.to(ACC), axis=0)
        cnt, mean, m2s = merge_block(zero_n, zero_n, zero_n, g_r, m2, nb)
        cnt, mean, m2s = merge_block(cnt, mean, m2s, g_z, m2, nb)
        cnt, mean, m2s = merge_block(cnt, mean, m2s, g_n, m2, nb)
        pp = ln_part + tl.program_id(0).to(tl.int64) * 2 * B + offs_b
        tl.store(pp, mean, mask=vb)
        tl.store(pp + B, m2s, mask=vb)
    else:
        _gru_cell(g_r, g_z, g_n, xp, b_hh, hs, y, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rm_h, rv_h, zh, s, t,
                  active, offs_b, vb, offs_j, vj, B, H, NS, slot, eps, BN, SAVE, ZO, HAS_BIAS)


@triton.jit
def _gru_cell(g_r, g_z, g_n, xp, b_hh, hs, y, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rm_h, rv_h, zh, s, t, active,
              offs_b, vb, offs_j, vj, B, H, NS, slot, eps, BN: tl.constexpr, SAVE: tl.constexpr, ZO: tl.constexpr,
              HAS_BIAS: tl.constexpr):
    """Step s after its GEMM (both designs; not layer norm): N_h's batch norm over the
    program's rows (all B rows; its x_hat saved with SAVE), then the gates and the update
    (_gates_update)."""
    G = 3 * H
    a2 = active[:, None]
    if BN != NORM_NONE:
        m2 = vb[:, None] & vj[None, :]
        n_rows = tl.maximum(tl.sum(active.to(g_r.dtype), axis=0), 1.0)
        x_r, g_r = _bn_h_fwd(g_r, a2, n_rows, offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h, rv_h, eps, BN)
        x_z, g_z = _bn_h_fwd(g_z, a2, n_rows, H + offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h, rv_h, eps, BN)
        x_n, g_n = _bn_h_fwd(g_n, a2, n_rows, 2 * H + offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h, rv_h, eps, BN)
        if SAVE:
            hp = hhat_ws + step_offset(s, B, G) + offs_b[:, None] * G + offs_j[None, :]
            tl.store(hp, x_r, mask=m2)
            tl.store(hp + H, x_z, mask=m2)
            tl.store(hp + 2 * H, x_n, mask=m2)
    _gates_update(g_r, g_z, g_n, xp, b_hh, hs, y, gates_ws, gn_ws, zh, s, t, a2, offs_b, vb, offs_j, vj, B, H, NS,
                  SAVE, ZO, HAS_BIAS)


@triton.jit
def _gates_update(g_r, g_z, g_n, xp, b_hh, hs, y, gates_ws, gn_ws, zh, s, t, a2, offs_b, vb, offs_j, vj, B, H, NS,
                  SAVE: tl.constexpr, ZO: tl.constexpr, HAS_BIAS: tl.constexpr):
    """From the recurrent parts [BB, BH] of the three gates (N_h's output, before b_hh): the
    gates, the update and the new h (emit_h: zoneout, finished rows, y); SAVE keeps r, z, n and
    the reset product's operand g_n for backward."""
    ACC = g_r.dtype
    G = 3 * H
    m2 = vb[:, None] & vj[None, :]
    rows = offs_b[:, None] * G + offs_j[None, :]
    if HAS_BIAS:
        g_r += tl.load(b_hh + offs_j, mask=vj, other=0.0).to(ACC)[None, :]
        g_z += tl.load(b_hh + H + offs_j, mask=vj, other=0.0).to(ACC)[None, :]
        g_n += tl.load(b_hh + 2 * H + offs_j, mask=vj, other=0.0).to(ACC)[None, :]
    xr = xp + t[:, None].to(tl.int64) * B * G + rows
    r = sigmoid(g_r + tl.load(xr, mask=m2, other=0.0).to(ACC))
    z = sigmoid(g_z + tl.load(xr + H, mask=m2, other=0.0).to(ACC))
    n = tanh(tl.load(xr + 2 * H, mask=m2, other=0.0).to(ACC) + r * g_n)
    h_prev = hs + step_offset(s % NS, B, H)
    h_own = load_tile(h_prev, offs_b, vb, offs_j, vj, H).to(ACC)
    if SAVE:
        gp = gates_ws + step_offset(s, B, G) + rows
        tl.store(gp, tl.where(a2, r, 0.0), mask=m2)
        tl.store(gp + H, tl.where(a2, z, 0.0), mask=m2)
        tl.store(gp + 2 * H, tl.where(a2, n, 0.0), mask=m2)
        store_tile(gn_ws + step_offset(s, B, H), tl.where(a2, g_n, 0.0), offs_b, vb, offs_j, vj, H)
    emit_h((1.0 - z) * n + z * h_own, h_prev, hs, y, zh, s, t, a2, offs_b, vb, offs_j, vj, B, H, NS, ZO)


@triton.jit(do_not_specialize=DNS)
def gru_ln_fwd_kernel(xp, b_hh, lengths, hs, y, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, zh, ln_part,
                      s, T, B, H, NS, NSC, eps,
                      HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, ZO: tl.constexpr,
                      HAS_BIAS: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BG: tl.constexpr,
                      NP: tl.constexpr):
    """Layer norm, step s, after fwd_gru_kernel stored the raw GEMM and its per-block
    statistics: rows block program_id(0), every hidden unit in BH-wide blocks.  LN_h's row
    statistics merged from the GEMM programs' (stats_h[s]: mean, rstd), x_hat over the raw
    values, gamma * x_hat, then the gates and the update (_gates_update).  norm_wh: LN_h's
    gain [3H] (its bias is in b_hh)."""
    ACC = gn_ws.dtype.element_ty
    G = 3 * H
    offs_b, vb, L, active, t = row_program(lengths, s, T, B, BB, HAS_LEN, REVERSE)
    a2 = active[:, None]
    raw = hhat_ws + step_offset(s % NSC, B, G)
    mean, rstd = merged_stats(ln_part, offs_b, vb, H, eps, stats_h, s, B, BB, BG, NP, 3)
    for j0 in range(0, H, BH):
        offs_j = j0 + tl.arange(0, BH)
        vj = offs_j < H
        g_r = _ln_gate(raw, offs_b, vb, offs_j, vj, G, mean, rstd, norm_wh)
        g_z = _ln_gate(raw, offs_b, vb, H + offs_j, vj, G, mean, rstd, norm_wh)
        g_n = _ln_gate(raw, offs_b, vb, 2 * H + offs_j, vj, G, mean, rstd, norm_wh)
        _gates_update(g_r.to(ACC), g_z.to(ACC), g_n.to(ACC), xp, b_hh, hs, y, gates_ws, gn_ws, zh, s, t, a2, offs_b,
                      vb, offs_j, vj, B, H, NS, SAVE, ZO, HAS_BIAS)



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
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, s, T, B, H, BB, BH, HAS_LEN, REVERSE)
    slot = tl.minimum(bn_off + s, bn_S - 1)
    dh = _carried(dh_n, dh_buf, dz_buf, w_hh, mask, zh, dhh_ws, s + 1, L, vb, offs_b, offs_j, vj, T, B, H,
                  MASK, REVERSE, ZO, PREC, BK, KST)
    dh, dz = _gru_bwd_cell(dh, dy, hs, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rv_h, zh, dxp, dhh_ws, dg_h,
                           db_part, s * tl.num_programs(1) + tl.program_id(1), s, t, active, offs_b, vb, offs_j, vj,
                           B, H, slot, eps, BN, ZO, HAS_BIAS)
    store_tile(dh_buf + step_offset(s % 2, B, H), dh, offs_b, vb, offs_j, vj, H)
    store_tile(dz_buf + step_offset(s % 2, B, H), dz, offs_b, vb, offs_j, vj, H)


@triton.jit
def _gru_bwd_cell(dh, dy, hs, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rv_h, zh, dxp, dhh_ws, dg_h, db_part, prow,
                  s, t, active, offs_b, vb, offs_j, vj, B, H, slot, eps, BN: tl.constexpr, ZO: tl.constexpr,
                  HAS_BIAS: tl.constexpr):
    """Backward step s (both designs) for hidden units offs_j, rows offs_b, given dh = dL/dh_s
    from the later steps: the gate gradients to dxp (at the rows' positions t), dL/d(N_h
    input) to dhh_ws[s] (through batch norm's backward; layer norm's is gru_ln_bwd_kernel's),
    this program's sum of dL/db_hh over its rows to row prow of db_part.  Returns (the dh to
    carry to step s - 1, which transfer takes through W_hh; dL/dh~_s * z_s, the update gate's
    direct share of dL/dh_{s-1})."""
    ACC = dh.dtype
    G = 3 * H
    a2 = active[:, None]
    m2 = vb[:, None] & vj[None, :]
    dy_t = load_pos(dy, t, offs_b, vb, offs_j, vj, B, H).to(ACC)
    dh, dht = output_grad(dh, dy_t, a2, zh, s, offs_b, vb, offs_j, vj, B, H, ZO)
    rows = offs_b[:, None] * G + offs_j[None, :]
    gp = gates_ws + step_offset(s, B, G) + rows
    r = tl.load(gp, mask=m2, other=0.0)
    z = tl.load(gp + H, mask=m2, other=0.0)
    n = tl.load(gp + 2 * H, mask=m2, other=0.0)
    g_n = load_tile(gn_ws + step_offset(s, B, H), offs_b, vb, offs_j, vj, H)
    h_own = load_tile(hs + step_offset(s, B, H), offs_b, vb, offs_j, vj, H).to(ACC)
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
        bp = db_part + tl.cast(prow, tl.int64) * G + offs_j
        tl.store(bp, tl.sum(d_r, axis=0), mask=vj)
        tl.store(bp + H, tl.sum(d_z, axis=0), mask=vj)
        tl.store(bp + 2 * H, tl.sum(d_gn, axis=0), mask=vj)
    if BN != NORM_NONE and BN != NORM_LAYER:
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
    return dh, tl.where(a2, dht * z, 0.0)


@triton.jit(do_not_specialize=DNS)
def gru_final_kernel(dh_n, w_hh, mask, lengths, zh, dhh_ws, dh_buf, dz_buf, dh0, T, B, H,
                     MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, ZO: tl.constexpr,
                     PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """dL/dh0 for hidden units block program_id(0), rows block program_id(1), after step 0."""
    offs_j, vj, offs_b, vb, L, active, t = step_program(lengths, 0, T, B, H, BB, BH, HAS_LEN, REVERSE)
    dh = _carried(dh_n, dh_buf, dz_buf, w_hh, mask, zh, dhh_ws, 0, L, vb, offs_b, offs_j, vj, T, B, H,
                  MASK, REVERSE, ZO, PREC, BK, KST)
    store_tile(dh0, dh, offs_b, vb, offs_j, vj, H)


@triton.jit(do_not_specialize=DNS)
def gru_ln_bwd_kernel(lengths, hhat_ws, stats_h, norm_wh, dhh_ws, dg_h, s, T, B, H,
                      HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr):
    """Layer norm, backward step s, after bwd_gru_kernel stored dL/d(LN_h out) in dhh_ws[s]:
    rows block program_id(0), every column, in two passes over BH-wide blocks: the row sums of
    dL/dx_hat and dL/dx_hat * x_hat (and the gain's gradient of this row block, to row
    s * n_row_blocks + program_id(0) of dg_h [*, 3H]); then dL/d((h * m) W_hh^T) in place."""
    ACC = hhat_ws.dtype.element_ty
    G = 3 * H
    pid = tl.program_id(0)
    offs_b, vb, L, active, _ = row_program(lengths, s, T, B, BB, HAS_LEN, REVERSE)
    a2 = active[:, None]
    rstd = tl.load(stats_h + tl.cast(s, tl.int64) * 2 * B + B + offs_b, mask=vb, other=1.0)
    prow = tl.cast(s, tl.int64) * tl.num_programs(0) + pid
    hh = hhat_ws + step_offset(s, B, G)
    dd = dhh_ws + step_offset(s, B, G)
    n1 = tl.zeros([BB], dtype=ACC)
    n2 = tl.zeros([BB], dtype=ACC)
    for j0 in range(0, G, BH):
        col = j0 + tl.arange(0, BH)
        vc = col < G
        dp = load_tile(dd, offs_b, vb, col, vc, G).to(ACC)
        xh = load_tile(hh, offs_b, vb, col, vc, G)
        dxh = dp * tl.load(norm_wh + col, mask=vc, other=0.0).to(ACC)[None, :]
        n1 += tl.sum(dxh, axis=1)
        n2 += tl.sum(dxh * xh, axis=1)
        tl.store(dg_h + prow * G + col, tl.sum(dp * xh, axis=0), mask=vc)
    n1 = n1 / G
    n2 = n2 / G
    tl.debug_barrier()
    for j0 in range(0, G, BH):
        col = j0 + tl.arange(0, BH)
        vc = col < G
        dp = load_tile(dd, offs_b, vb, col, vc, G).to(ACC)
        xh = load_tile(hh, offs_b, vb, col, vc, G)
        dxh = dp * tl.load(norm_wh + col, mask=vc, other=0.0).to(ACC)[None, :]
        store_tile(dd, tl.where(a2, rstd[:, None] * (dxh - n1[:, None] - xh * n2[:, None]), 0.0), offs_b, vb, col,
                   vc, G)


# ---- the persistent design: one launch for the whole sequence, a grid barrier per step ----


@triton.jit(do_not_specialize=DNS)
def fwd_gru_persistent_kernel(xp, w_hh, b_hh, mask, lengths, hs, y, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rm_h,
                              rv_h, zh, bar, T, B, H, NS, bn_off, bn_S, eps,
                              MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, BN: tl.constexpr,
                              SAVE: tl.constexpr, ZO: tl.constexpr, HAS_BIAS: tl.constexpr,
                              RESIDENT: tl.constexpr, PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
                              BK: tl.constexpr, KST: tl.constexpr, HP: tl.constexpr):
    """The whole forward in one launch (not layer norm).  Program pid owns rows block
    pid % n_bblk and hidden units block pid // n_bblk (persistent_program; batch norm: one
    block of all rows).  RESIDENT: its three W_hh gate tiles [HP, BH] are loaded once, before
    the time loop; else gru_gates_stream streams them each step.  h goes through hs (slot
    s % NS) to every program, one grid barrier per step."""
    ACC = gn_ws.dtype.element_ty
    nprog = tl.num_programs(0)
    offs_b, vb, offs_j, vj, _, _, L = persistent_program(lengths, T, B, H, H, BB, BH, BH, HAS_LEN)
    offs_k = tl.arange(0, HP)
    vk = offs_k < H
    if RESIDENT:
        w_r = load_w(w_hh, offs_k, vk, 1, offs_j, vj, H)
        w_z = load_w(w_hh + H * H, offs_k, vk, 1, offs_j, vj, H)
        w_n = load_w(w_hh + 2 * H * H, offs_k, vk, 1, offs_j, vj, H)
    for s in range(0, T):
        active, t = row_step(L, vb, s, REVERSE)
        slot = tl.minimum(bn_off + s, bn_S - 1)
        h_prev, m_ptr = step_operands(hs, mask, s, NS, B, H, MASK)
        zero = tl.zeros([BB, BH], dtype=ACC)
        if RESIDENT:
            a = load_a(h_prev, m_ptr, offs_b, vb, offs_k, vk, H, MASK != 0).to(w_hh.dtype.element_ty)
            g_r = tl.dot(a, w_r, zero, input_precision=PREC)
            g_z = tl.dot(a, w_z, zero, input_precision=PREC)
            g_n = tl.dot(a, w_n, zero, input_precision=PREC)
        else:
            g_r, g_z, g_n = gru_gates_stream(zero, zero, zero, h_prev, m_ptr, offs_b, vb, H, w_hh, offs_j, vj,
                                             MASK != 0, PREC, BK, KST)
        _gru_cell(g_r, g_z, g_n, xp, b_hh, hs, y, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rm_h, rv_h, zh, s, t,
                  active, offs_b, vb, offs_j, vj, B, H, NS, slot, eps, BN, SAVE, ZO, HAS_BIAS)
        grid_sync(bar, (s + 1) * nprog)
    grid_reset(bar, nprog)


@triton.jit(do_not_specialize=DNS)
def bwd_gru_persistent_kernel(dy, dh_n, w_hh, mask, lengths, hs, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rv_h,
                              zh, dxp, dhh_ws, dg_h, db_part, dh0, bar, T, B, H, bn_off, bn_S, eps,
                              MASK: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, BN: tl.constexpr,
                              ZO: tl.constexpr, HAS_BIAS: tl.constexpr, RESIDENT: tl.constexpr,
                              PREC: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
                              KST: tl.constexpr, GP: tl.constexpr):
    """The whole backward in one launch, the steps in reverse; each program owns the rows and
    hidden units it owned in the forward.  dL/dh_s and the update gate's direct share stay in
    registers; dhh_ws[s] goes to every program (transfer), one grid barrier per step.
    RESIDENT: W_hh[:, its hidden units] ([GP, BH]) is loaded once."""
    ACC = gn_ws.dtype.element_ty
    G = 3 * H
    nprog = tl.num_programs(0)
    n_bblk = tl.cdiv(B, BB)
    offs_b, vb, offs_j, vj, _, _, L = persistent_program(lengths, T, B, H, H, BB, BH, BH, HAS_LEN)
    w_t = w_hh
    if RESIDENT:
        offs_g = tl.arange(0, GP)
        w_t = load_w(w_hh, offs_g, offs_g < G, H, offs_j, vj, 1)
    dh = load_tile(dh_n, offs_b, vb, offs_j, vj, H).to(ACC)
    dz = tl.zeros([BB, BH], dtype=ACC)
    for it in range(0, T):
        s = T - 1 - it
        active, t = row_step(L, vb, s, REVERSE)
        slot = tl.minimum(bn_off + s, bn_S - 1)
        if s < T - 1:
            dh = transfer(dh, s + 1, L, vb, offs_b, offs_j, vj, B, G, H, dhh_ws, w_hh, w_t, mask, zh,
                          MASK, REVERSE, RESIDENT, ZO, PREC, BK, GP, KST) + dz
        dh, dz = _gru_bwd_cell(dh, dy, hs, gates_ws, gn_ws, hhat_ws, stats_h, norm_wh, rv_h, zh, dxp, dhh_ws, dg_h,
                               db_part, s * n_bblk + tl.program_id(0) % n_bblk, s, t, active, offs_b, vb, offs_j, vj,
                               B, H, slot, eps, BN, ZO, HAS_BIAS)
        grid_sync(bar, (it + 1) * nprog)
    dh = transfer(dh, 0, L, vb, offs_b, offs_j, vj, B, G, H, dhh_ws, w_hh, w_t, mask, zh,
                  MASK, REVERSE, RESIDENT, ZO, PREC, BK, GP, KST) + dz
    store_tile(dh0, dh, offs_b, vb, offs_j, vj, H)
    grid_reset(bar, nprog)
