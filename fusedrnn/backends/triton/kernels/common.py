"""What the Triton kernels share (inlined into them): the encodings of the option
constexprs, the building blocks, and the per-step arithmetic of the cell.

Dimension letters: T steps, B batch, H hidden, P projection (proj_size), R = P or H (the
width of h), G = 4H gate columns in the order i, f, g, o.  K a reduction dimension, N an
output-column dimension.  s is the processing step; t the time position a row reads / writes
at step s (t = s, or L_b - 1 - s in reverse).  Tile sizes: BB rows of the batch, BN / BH / BP
output columns, BK reduction chunk.

Conventions: pointers to [.., B, F] row-major buffers; a step's slice starts at
``ptr + step * B * F`` (computed in int64); row masks are [BB] booleans (``vb``: the row
exists, ``active``: the row's sequence is still running at this step).
"""

from __future__ import annotations

import enum

import triton
import triton.language as tl

from ....core.contract import MaskMode, NormMode


class ZoneoutMode(enum.IntEnum):
    """How the kernels read zoneout (ZO): off, [T, B, *] weights (the training draws), or one
    rate each for c and h (the eval expectation, read once per tile)."""

    NONE = 0
    WEIGHTS = 1
    RATE = 2


# The option constexprs' values as the kernels compare them (Triton reads only constexpr
# globals in a kernel): MASK is the contract's MaskMode, BN its NormMode (layer norm
# included), ZO a ZoneoutMode.
MASK_NONE = tl.constexpr(int(MaskMode.NONE))
MASK_SHARED = tl.constexpr(int(MaskMode.SHARED))
MASK_PER_STEP = tl.constexpr(int(MaskMode.PER_STEP))
NORM_NONE = tl.constexpr(int(NormMode.NONE))
NORM_BATCH_TRAIN = tl.constexpr(int(NormMode.BATCH_TRAIN))
NORM_LAYER = tl.constexpr(int(NormMode.LAYER))
ZO_NONE = tl.constexpr(int(ZoneoutMode.NONE))
ZO_RATE = tl.constexpr(int(ZoneoutMode.RATE))

# Runtime integers that change with the sequence, never specialised on (no recompiles).
DNS = ["s", "T", "NS", "NSC", "bn_off", "bn_S"]

# The streamed K loops (mm_stream, gates_stream) are software-pipelined KST deep (a tiling's
# constexpr, config.stream_stages): while chunk k is multiplied, the loads of chunks
# k + 1 .. k + KST - 1 are in flight (cp.async to shared memory).  Only these inner loops are
# pipelined: a persistent kernel's time loop keeps num_stages = 1 (the launch's), so no load of
# step s + 1 moves above step s's grid barrier.


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # tanh via exp(-2|x|): no overflow, absolute error at the level of the format's epsilon.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def step_offset(step, B, F):
    """Element offset (int64) of step ``step`` of a [*, B, F] buffer."""
    return tl.cast(step, tl.int64) * B * F


@triton.jit
def row_lengths(lengths, offs_b, vb, T, HAS_LEN: tl.constexpr):
    """[BB] int32 sequence length of each row (T without lengths; clamped to [0, T])."""
    if HAS_LEN:
        L = tl.load(lengths + offs_b, mask=vb, other=0).to(tl.int32)
        L = tl.minimum(tl.maximum(L, 0), T)
    else:
        L = tl.zeros_like(offs_b) + T
    return L


@triton.jit
def row_step(L, vb, s, REVERSE: tl.constexpr):
    """At processing step s: (active [BB] bool, time position t [BB] int32 of each row).

    Reverse: row b reads position L_b - 1 - s while s < L_b; finished rows map to s
    (their padding position, where they write zeros)."""
    active = vb & (s < L)
    if REVERSE:
        t = tl.where(s < L, L - 1 - s, s)
    else:
        t = tl.zeros_like(L) + s
    return active, t


@triton.jit
def step_program(lengths, s, T, B, N, BB: tl.constexpr, BN: tl.constexpr, HAS_LEN: tl.constexpr,
                 REVERSE: tl.constexpr):
    """Where a per-step program works: columns block program_id(0) of BN of N columns (offs_n,
    vn), rows block program_id(1) of BB rows (offs_b, vb), their lengths L, and at step s the
    active rows and time positions t (row_step)."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_b = tl.program_id(1) * BB + tl.arange(0, BB)
    vn = offs_n < N
    vb = offs_b < B
    L = row_lengths(lengths, offs_b, vb, T, HAS_LEN)
    active, t = row_step(L, vb, s, REVERSE)
    return offs_n, vn, offs_b, vb, L, active, t


@triton.jit
def row_program(lengths, s, T, B, BB: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr):
    """Where a whole-row program (layer norm's row kernels) works: rows block program_id(0) of
    BB rows (offs_b, vb), their lengths L, and at step s the active rows and positions t."""
    offs_b = tl.program_id(0) * BB + tl.arange(0, BB)
    vb = offs_b < B
    L = row_lengths(lengths, offs_b, vb, T, HAS_LEN)
    active, t = row_step(L, vb, s, REVERSE)
    return offs_b, vb, L, active, t


@triton.jit
def persistent_program(lengths, T, B, H, R, BB: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr,
                       HAS_LEN: tl.constexpr):
    """What program pid of a persistent launch owns (the same in the forward and the backward):
    rows block pid % n_bblk (n_bblk = cdiv(B, BB)) and column block c = pid // n_bblk, i.e.
    hidden units [c * BH, (c + 1) * BH) and projection / h columns [c * BP, (c + 1) * BP).
    Returns offs_b, vb, offs_j, vj, offs_p, vp and the rows' lengths L."""
    pid = tl.program_id(0)
    n_bblk = tl.cdiv(B, BB)
    pid_b = pid % n_bblk
    pid_c = pid // n_bblk
    offs_b = pid_b * BB + tl.arange(0, BB)
    offs_j = pid_c * BH + tl.arange(0, BH)
    offs_p = pid_c * BP + tl.arange(0, BP)
    vb = offs_b < B
    L = row_lengths(lengths, offs_b, vb, T, HAS_LEN)
    return offs_b, vb, offs_j, offs_j < H, offs_p, offs_p < R, L


@triton.jit
def step_operands(hs, mask, s, NS, B, R, MASK: tl.constexpr):
    """What step s multiplies by W_hh: h_{s-1} (slot s % NS of the h states) and the recurrent
    mask (the shared [B, R] one, or step s of a per-step [T, B, R] one)."""
    h_prev = hs + step_offset(s % NS, B, R)
    m_ptr = mask
    if MASK == MASK_PER_STEP:
        m_ptr = mask + step_offset(s, B, R)
    return h_prev, m_ptr


@triton.jit
def store_gates(ptr, H, m2, v_i, v_f, v_g, v_o):
    """Store the four gate blocks of a [B, 4H] row-major buffer: ptr holds the offsets of the
    i block; f, g and o follow H, 2H and 3H columns on."""
    tl.store(ptr, v_i, mask=m2)
    tl.store(ptr + H, v_f, mask=m2)
    tl.store(ptr + 2 * H, v_g, mask=m2)
    tl.store(ptr + 3 * H, v_o, mask=m2)


@triton.jit
def load_tile(ptr, offs_b, vb, offs_n, vn, F):
    """[BB, BN] tile of a [B, F] row-major buffer (zeros outside); L1 bypassed (.cg) because
    other programs of a persistent launch write these buffers."""
    return tl.load(ptr + offs_b[:, None] * F + offs_n[None, :], mask=vb[:, None] & vn[None, :],
                   other=0.0, cache_modifier=".cg")


@triton.jit
def store_tile(ptr, val, offs_b, vb, offs_n, vn, F):
    tl.store(ptr + offs_b[:, None] * F + offs_n[None, :], val.to(ptr.dtype.element_ty),
             mask=vb[:, None] & vn[None, :])


@triton.jit
def load_pos(ptr, t, offs_b, vb, offs_n, vn, B, F):
    """[BB, BN] of a [T, B, F] buffer, row b read at its own time position t[b]."""
    p = ptr + t[:, None].to(tl.int64) * B * F + offs_b[:, None] * F + offs_n[None, :]
    return tl.load(p, mask=vb[:, None] & vn[None, :], other=0.0)


@triton.jit
def store_pos(ptr, val, t, offs_b, vb, offs_n, vn, B, F):
    p = ptr + t[:, None].to(tl.int64) * B * F + offs_b[:, None] * F + offs_n[None, :]
    tl.store(p, val.to(ptr.dtype.element_ty), mask=vb[:, None] & vn[None, :])


@triton.jit
def load_w(w_ptr, offs_k, vk, stride_k, offs_n, vn, stride_n):
    """[BK, BN] tile W[k, n] = *(w_ptr + k * stride_k + n * stride_n) (zeros outside)."""
    return tl.load(w_ptr + offs_k[:, None] * stride_k + offs_n[None, :] * stride_n,
                   mask=vk[:, None] & vn[None, :], other=0.0)


@triton.jit
def load_a(a_ptr, m_ptr, offs_b, vb, offs_k, vk, K, MASKED: tl.constexpr):
    """[BB, BK] operand chunk A[b, k] of a [B, K] buffer, times the mask M[b, k] if MASKED."""
    a = load_tile(a_ptr, offs_b, vb, offs_k, vk, K)
    if MASKED:
        a = a * load_tile(m_ptr, offs_b, vb, offs_k, vk, K).to(a.dtype)
    return a


@triton.jit
def mm_stream(acc, a_ptr, m_ptr, offs_b, vb, K, w_ptr, stride_k, offs_n, vn, stride_n,
              MASKED: tl.constexpr, PREC: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """acc += (A * M) @ W over K in chunks of BK, W streamed from global memory (L2).

    A is a state buffer (h in the model's dtype, or fp32 / fp64); it is cast to W's dtype for the
    dot (fp32 accumulation).  Pipelined KST deep."""
    for k0 in tl.range(0, K, BK, num_stages=KST):
        offs_k = k0 + tl.arange(0, BK)
        vk = offs_k < K
        a = load_a(a_ptr, m_ptr, offs_b, vb, offs_k, vk, K, MASKED)
        w = load_w(w_ptr, offs_k, vk, stride_k, offs_n, vn, stride_n)
        acc = tl.dot(a.to(w.dtype), w, acc, input_precision=PREC)
    return acc


@triton.jit
def project(z, src, offs_b, vb, K, w_res, offs_k, vk, w_ptr, stride_k, offs_n, vn, stride_n,
            RESIDENT: tl.constexpr, PREC: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """z + src [BB, K] (an ACC state buffer) @ W: with RESIDENT, W is the tile w_res on chip
    (K padded to offs_k), else it is streamed from w_ptr in chunks of BK (mm_stream)."""
    if RESIDENT:
        a = load_tile(src, offs_b, vb, offs_k, vk, K).to(w_res.dtype)
        return tl.dot(a, w_res, z, input_precision=PREC)
    return mm_stream(z, src, src, offs_b, vb, K, w_ptr, stride_k, offs_n, vn, stride_n, False, PREC, BK, KST)


@triton.jit
def gates_stream(acc_i, acc_f, acc_g, acc_o, a_ptr, m_ptr, offs_b, vb, R, H, w_hh, offs_j, vj,
                 MASKED: tl.constexpr, PREC: tl.constexpr, BK: tl.constexpr, KST: tl.constexpr):
    """The four gate blocks of (h * m) @ W_hh^T for hidden units offs_j: one operand chunk,
    four dots.  W_hh is [G, R]; gate k of unit j is row k * H + j.  Pipelined KST deep."""
    for k0 in tl.range(0, R, BK, num_stages=KST):
        offs_k = k0 + tl.arange(0, BK)
        vk = offs_k < R
        a = load_a(a_ptr, m_ptr, offs_b, vb, offs_k, vk, R, MASKED).to(w_hh.dtype.element_ty)
        w_i = load_w(w_hh, offs_k, vk, 1, offs_j, vj, R)
        acc_i = tl.dot(a, w_i, acc_i, input_precision=PREC)
        w_f = load_w(w_hh + H * R, offs_k, vk, 1, offs_j, vj, R)
        acc_f = tl.dot(a, w_f, acc_f, input_precision=PREC)
        w_g = load_w(w_hh + 2 * H * R, offs_k, vk, 1, offs_j, vj, R)
        acc_g = tl.dot(a, w_g, acc_g, input_precision=PREC)
        w_o = load_w(w_hh + 3 * H * R, offs_k, vk, 1, offs_j, vj, R)
        acc_o = tl.dot(a, w_o, acc_o, input_precision=PREC)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def grid_sync(bar, target):
    """Grid-wide barrier of a persistent launch: every program adds 1 to the counter
    *bar and waits until it reaches ``target`` (= number of barriers passed so far times
    the number of programs).  Release on arrival, acquire on leaving, so the global-memory
    writes of every program before the barrier are visible to every program after it.
    Needs all programs co-resident (grid <= multiprocessors, one program each); in the
    interpreter a persistent launch has one program, so it passes at once."""
    tl.debug_barrier()  # all threads of this program have issued their stores
    tl.atomic_add(bar, 1, sem="release", scope="gpu")
    cur = tl.load(bar, volatile=True)
    while cur < target:
        cur = tl.load(bar, volatile=True)
    tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()  # the acquire is ordered before every thread's later loads


@triton.jit
def grid_reset(bar, nprog):
    """Leave the two barrier counters (bar[0] arrivals, bar[1] departures) at zero, so the
    launch can be repeated on the same buffer (the autotuner re-runs launches): the last
    program to depart zeroes them; every other program has passed its last barrier."""
    tl.debug_barrier()
    old = tl.atomic_add(bar + 1, 1, sem="acq_rel", scope="gpu")
    if old == nprog - 1:
        tl.atomic_xchg(bar, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(bar + 1, 0, sem="relaxed", scope="gpu")


# ---- zoneout ------------------------------------------------------------------------------


@triton.jit
def load_zone(ptr, s, offs_b, vb, offs_n, vn, B, F, dtype, ZO: tl.constexpr):
    """Zoneout weights of the previous state at step s for rows offs_b, columns offs_n of an
    F-wide state: a [T, B, F] tensor ([BB, BN] tile), or with ZO == ZO_RATE one rate (a scalar;
    the eval expectation, passed as an expanded view that the kernels read once)."""
    if ZO == ZO_RATE:
        z = tl.load(ptr).to(dtype)
    else:
        z = tl.load(ptr + step_offset(s, B, F) + offs_b[:, None] * F + offs_n[None, :],
                    mask=vb[:, None] & vn[None, :], other=0.0).to(dtype)
    return z


@triton.jit
def zone_mix(z, prev, new):
    """Zoneout of a state: z * prev + (1 - z) * new (z = 1 where the unit keeps its value)."""
    return z * prev + (1.0 - z) * new


# ---- batch norm over the active rows of one step --------------------------------------


@triton.jit
def bn_stats(v, a2, n, col, vc, s, slot, F, stats, rm, rv, BN: tl.constexpr):
    """(mean, var) [BN] of v [BB, BN] for columns col of an F-wide feature: in training
    (BN == NORM_BATCH_TRAIN) biased statistics over the active rows (a2 [BB, 1], n =
    max(count, 1)), stored to stats[s, 0 | 1, col]; in eval the running statistics of ``slot``."""
    if BN == NORM_BATCH_TRAIN:
        mean = tl.sum(tl.where(a2, v, 0.0), axis=0) / n
        d = tl.where(a2, v - mean[None, :], 0.0)
        var = tl.sum(d * d, axis=0) / n
        sp = stats + tl.cast(s, tl.int64) * 2 * F + col
        tl.store(sp, mean.to(stats.dtype.element_ty), mask=vc)
        tl.store(sp + F, var.to(stats.dtype.element_ty), mask=vc)
    else:
        mean = tl.load(rm + slot * F + col, mask=vc, other=0.0).to(v.dtype)
        var = tl.load(rv + slot * F + col, mask=vc, other=1.0).to(v.dtype)
    return mean, var


@triton.jit
def bn_saved_stats(s, slot, col, vc, F, stats, rm, rv, dtype, BN: tl.constexpr):
    """(mean, var) [BN] of step s as the forward used them (saved batch or running)."""
    if BN == NORM_BATCH_TRAIN:
        sp = stats + tl.cast(s, tl.int64) * 2 * F + col
        mean = tl.load(sp, mask=vc, other=0.0).to(dtype)
        var = tl.load(sp + F, mask=vc, other=1.0).to(dtype)
    else:
        mean = tl.load(rm + slot * F + col, mask=vc, other=0.0).to(dtype)
        var = tl.load(rv + slot * F + col, mask=vc, other=1.0).to(dtype)
    return mean, var


@triton.jit
def bn_backward(dxh, xh, rstd, a2, n, BN: tl.constexpr):
    """Gradient wrt the batch-norm input, given dxh = dL/d(x_hat) [BB, BN] and x_hat.
    Training: through the batch statistics of the active rows; eval: a scale."""
    if BN == NORM_BATCH_TRAIN:
        m1 = tl.sum(tl.where(a2, dxh, 0.0), axis=0) / n
        m2 = tl.sum(tl.where(a2, dxh * xh, 0.0), axis=0) / n
        dx = rstd[None, :] * (dxh - m1[None, :] - xh * m2[None, :])
    else:
        dx = dxh * rstd[None, :]
    return dx


# ---- the per-step arithmetic ----------------------------------------------------------


@triton.jit
def _bn_h_fwd(v, a2, n, col, vc, s, slot, G, stats_h, norm_wh, rm_h, rv_h, eps, BN: tl.constexpr):
    """BN_h of one gate block: returns (x_hat, gamma * x_hat)."""
    mean, var = bn_stats(v, a2, n, col, vc, s, slot, G, stats_h, rm_h, rv_h, BN)
    rstd = 1.0 / tl.sqrt(var + eps)
    xh = (v - mean[None, :]) * rstd[None, :]
    gamma = tl.load(norm_wh + col, mask=vc, other=0.0).to(v.dtype)
    return xh, xh * gamma[None, :]


@triton.jit
def fwd_cell(a_i, a_f, a_g, a_o, c_prev, xp, s, t, active, offs_b, vb, offs_j, vj, B, H, slot,
             eps, act_ws, hhat_ws, stats_h, stats_c, norm_wh, norm_wc, norm_bc, rm_h, rv_h, rm_c, rv_c,
             BN: tl.constexpr, SAVE: tl.constexpr):
    """Gates, BN_h, state update, BN_c of one step for hidden units offs_j.

    a_* [BB, BH]: the gate blocks of (h_{s-1} m_s) W_hh^T; c_prev [BB, BH].
    Returns (o * tanh(BN_c(c_new)), c_new)."""
    G = 4 * H
    a2 = active[:, None]
    m2 = vb[:, None] & vj[None, :]
    rows = offs_b[:, None] * G + offs_j[None, :]
    n = tl.maximum(tl.sum(active.to(a_i.dtype), axis=0), 1.0)
    if BN != NORM_NONE:
        x_i, a_i = _bn_h_fwd(a_i, a2, n, offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h, rv_h, eps, BN)
        x_f, a_f = _bn_h_fwd(a_f, a2, n, H + offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h, rv_h,
                             eps, BN)
        x_g, a_g = _bn_h_fwd(a_g, a2, n, 2 * H + offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h,
                             rv_h, eps, BN)
        x_o, a_o = _bn_h_fwd(a_o, a2, n, 3 * H + offs_j, vj, s, slot, G, stats_h, norm_wh, rm_h,
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
    if BN != NORM_NONE:
        mean, var = bn_stats(c_new, a2, n, offs_j, vj, s, slot, H, stats_c, rm_c, rv_c, BN)
        rstd = 1.0 / tl.sqrt(var + eps)
        gamma = tl.load(norm_wc + offs_j, mask=vj, other=0.0).to(c_new.dtype)
        beta = tl.load(norm_bc + offs_j, mask=vj, other=0.0).to(c_new.dtype)
        c_hat = (c_new - mean[None, :]) * (rstd * gamma)[None, :] + beta[None, :]
    return o * tanh(c_hat), c_new


@triton.jit
def emit_h(h_new, h_prev, hs, y, zh, s, t, a2, offs_b, vb, offs_n, vn, B, W, NS, ZO: tl.constexpr):
    """A step's new h (h~, [BB, BN]) for columns offs_n of the W-wide h: zoneout against
    h_{s-1} (read from h_prev, the step's h-state slot), held on finished rows, stored to the
    next h-state slot and to y at the rows' positions (zeros on finished rows)."""
    h_own = load_tile(h_prev, offs_b, vb, offs_n, vn, W).to(h_new.dtype)
    if ZO != ZO_NONE:
        h_new = zone_mix(load_zone(zh, s, offs_b, vb, offs_n, vn, B, W, h_new.dtype, ZO), h_own, h_new)
    store_tile(hs + step_offset((s + 1) % NS, B, W), tl.where(a2, h_new, h_own), offs_b, vb, offs_n, vn, W)
    store_pos(y, tl.where(a2, h_new, 0.0), t, offs_b, vb, offs_n, vn, B, W)


@triton.jit
def _bn_h_bwd(dp, s, slot, offs_b, vb, col, vc, B, G, a2, n, hhat_ws, stats_h, rv_h, norm_wh, dg_h,
              eps, BN: tl.constexpr):
    """BN_h backward of one gate block: stores dgamma_h of step s, returns dL/d(W_hh h m)."""
    xh = load_tile(hhat_ws + step_offset(s, B, G), offs_b, vb, col, vc, G)
    _, var = bn_saved_stats(s, slot, col, vc, G, stats_h, rv_h, rv_h, dp.dtype, BN)
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(dg_h + tl.cast(s, tl.int64) * G + col, tl.sum(tl.where(a2, dp * xh, 0.0), axis=0), mask=vc)
    gamma = tl.load(norm_wh + col, mask=vc, other=0.0).to(dp.dtype)
    return bn_backward(dp * gamma[None, :], xh, rstd, a2, n, BN)


@triton.jit
def bwd_cell(dhc, dc, s, t, active, offs_b, vb, offs_j, vj, B, H, slot, eps, act_ws, cs_prev,
             cs_new, hhat_ws, stats_h, stats_c, norm_wh, norm_wc, norm_bc, rv_h, rm_c, rv_c, dxp, dhh_ws,
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
    if ZO != ZO_NONE:
        c_new = f * c_prev + i * g  # c~ (cs holds the zoned-out state)
    else:
        c_new = load_tile(cs_new, offs_b, vb, offs_j, vj, H)
    n = tl.maximum(tl.sum(active.to(dhc.dtype), axis=0), 1.0)
    c_hat = c_new
    if BN != NORM_NONE:
        mean, var = bn_saved_stats(s, slot, offs_j, vj, H, stats_c, rm_c, rv_c, dhc.dtype, BN)
        rstd = 1.0 / tl.sqrt(var + eps)
        xc = (c_new - mean[None, :]) * rstd[None, :]
        gamma = tl.load(norm_wc + offs_j, mask=vj, other=0.0).to(dhc.dtype)
        beta = tl.load(norm_bc + offs_j, mask=vj, other=0.0).to(dhc.dtype)
        c_hat = xc * gamma[None, :] + beta[None, :]
    tc = tanh(c_hat)
    do = dhc * tc
    dch = dhc * o * (1.0 - tc * tc)
    if BN != NORM_NONE:
        so = tl.cast(s, tl.int64) * H + offs_j
        tl.store(dg_c + so, tl.sum(tl.where(a2, dch * xc, 0.0), axis=0), mask=vj)
        tl.store(db_c + so, tl.sum(tl.where(a2, dch, 0.0), axis=0), mask=vj)
        dch = bn_backward(dch * gamma[None, :], xc, rstd, a2, n, BN)
    if ZO != ZO_NONE:
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
    if BN != NORM_NONE:
        dp_i = _bn_h_bwd(dp_i, s, slot, offs_b, vb, offs_j, vj, B, G, a2, n, hhat_ws, stats_h,
                         rv_h, norm_wh, dg_h, eps, BN)
        dp_f = _bn_h_bwd(dp_f, s, slot, offs_b, vb, H + offs_j, vj, B, G, a2, n, hhat_ws, stats_h,
                         rv_h, norm_wh, dg_h, eps, BN)
        dp_g = _bn_h_bwd(dp_g, s, slot, offs_b, vb, 2 * H + offs_j, vj, B, G, a2, n, hhat_ws,
                         stats_h, rv_h, norm_wh, dg_h, eps, BN)
        dp_o = _bn_h_bwd(dp_o, s, slot, offs_b, vb, 3 * H + offs_j, vj, B, G, a2, n, hhat_ws,
                         stats_h, rv_h, norm_wh, dg_h, eps, BN)
    hr = dhh_ws + step_offset(s, B, G) + rows
    tl.store(hr, tl.where(a2, dp_i, 0.0), mask=m2)
    tl.store(hr + H, tl.where(a2, dp_f, 0.0), mask=m2)
    tl.store(hr + 2 * H, tl.where(a2, dp_g, 0.0), mask=m2)
    tl.store(hr + 3 * H, tl.where(a2, dp_o, 0.0), mask=m2)
    if ZO != ZO_NONE:  # z read again rather than kept live across the stores (a spill on sm_80)
        z = load_zone(zc, s, offs_b, vb, offs_j, vj, B, H, dhc.dtype, ZO)
        return tl.where(a2, dct * f + z * dc, dc)
    return tl.where(a2, dct * f, dc)


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
    if MASK == MASK_SHARED:
        tr = tr * load_tile(mask, offs_b, vb, offs_r, vr, R).to(tr.dtype)
    if MASK == MASK_PER_STEP:
        tr = tr * load_tile(mask + step_offset(nxt, B, R), offs_b, vb, offs_r, vr, R).to(tr.dtype)
    if ZO != ZO_NONE:
        tr = tr + load_zone(zh, nxt, offs_b, vb, offs_r, vr, B, R, tr.dtype, ZO) * dh
    return tl.where(act_n[:, None], tr, dh)


@triton.jit
def output_grad(dh, dy_t, a2, zh, s, offs_b, vb, offs_r, vr, B, R, ZO: tl.constexpr):
    """Given dh = dL/dh_s from the steps after s: (the dh to carry to step s - 1, dL/dh~_s).
    h~_s is the step's new output before zoneout; it gets (dh + dy_s) on the active rows,
    times (1 - z_s) with zoneout, and 0 on finished rows.  With zoneout the carried dh has
    dy_s in it, since z_s of it reaches h_{s-1} directly (transfer)."""
    if ZO != ZO_NONE:
        dtot = tl.where(a2, dh + dy_t, dh)
        return dtot, tl.where(a2, (1.0 - load_zone(zh, s, offs_b, vb, offs_r, vr, B, R, dh.dtype, ZO)) * dtot, 0.0)
    # without zoneout a step's W_hh transfer replaces the carried dh on the rows it runs
    # (transfer), so dy need not be carried: one tile fewer live in the persistent backward
    return dh, tl.where(a2, dh + dy_t, 0.0)
