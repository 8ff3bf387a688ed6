"""Triton building blocks shared by the recurrence kernels (inlined into them).

Dimension letters: T steps, B batch, H hidden, P projection, R = P or H (the width of h),
G = 4H gate columns (i, f, g, o), K a reduction dimension, N an output-column dimension.
Tile sizes: BB rows of the batch, BN / BH / BP output columns, BK reduction chunk.

Conventions: pointers to [.., B, F] row-major buffers; a step's slice starts at
``ptr + step * B * F`` (computed in int64); row masks are [BB] booleans (``vb``: the row
exists, ``active``: the row's sequence is still running at this step).
"""

from __future__ import annotations

import triton
import triton.language as tl

# The streamed K loops (mm_stream, gates_stream) are software-pipelined KST deep (a plan's
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
    if MASK == 2:
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
    F-wide state: ZO == 1 a [T, B, F] tensor ([BB, BN] tile), ZO == 2 one rate (a scalar; the
    eval expectation, passed as an expanded view that the kernels read once)."""
    if ZO == 2:
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
    (BN == 1) biased statistics over the active rows (a2 [BB, 1], n = max(count, 1)),
    stored to stats[s, 0 | 1, col]; in eval (BN == 2) the running statistics of ``slot``."""
    if BN == 1:
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
    if BN == 1:
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
    if BN == 1:
        m1 = tl.sum(tl.where(a2, dxh, 0.0), axis=0) / n
        m2 = tl.sum(tl.where(a2, dxh * xh, 0.0), axis=0) / n
        dx = rstd[None, :] * (dxh - m1[None, :] - xh * m2[None, :])
    else:
        dx = dxh * rstd[None, :]
    return dx


@triton.jit
def load_pos(ptr, t, offs_b, vb, offs_n, vn, B, F):
    """[BB, BN] of a [T, B, F] buffer, row b read at its own time position t[b]."""
    p = ptr + t[:, None].to(tl.int64) * B * F + offs_b[:, None] * F + offs_n[None, :]
    return tl.load(p, mask=vb[:, None] & vn[None, :], other=0.0)


@triton.jit
def store_pos(ptr, val, t, offs_b, vb, offs_n, vn, B, F):
    p = ptr + t[:, None].to(tl.int64) * B * F + offs_b[:, None] * F + offs_n[None, :]
    tl.store(p, val.to(ptr.dtype.element_ty), mask=vb[:, None] & vn[None, :])
