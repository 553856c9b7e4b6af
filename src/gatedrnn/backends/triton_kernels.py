"""Persistent Triton kernels for the GRU (both reset placements), the LSTM and the plain RNN
(tanh or ReLU), forward and backward through time. Imported only by
:mod:`gatedrnn.backends.gpu`, and only when first used.

One launch runs one layer direction over all T steps. The grid is ``(NP_H, NP_B)``: program
``(p, q)`` owns the hidden units ``p·BH … p·BH+BH−1`` of the batch rows ``q·BB … q·BB+BB−1``.
Every step, each program multiplies the whole previous state of its rows (read from global
memory, where the other programs of its batch group wrote it; it stays in L2) by its own slice of
the recurrent weights, does the pointwise gate math for its units with its own slice of the state
carried in registers (float32), writes its slice of the new state, loads the next step's inputs
(they do not depend on the others), and only then waits at a barrier for the other programs of
its batch group. The launcher never starts more programs than the GPU has multiprocessors, so
all of them are resident at once and the barrier cannot deadlock; under ``TRITON_INTERPRET=1``
it starts one program, and the barrier is trivial.

The barrier: a CTA barrier (so every thread's stores are issued), one release ``atomic_add`` on
the group's counter, then a spin on an acquire read of it until every program of the group has
arrived; state is read back with ``.cg`` loads (L2, not the SM's incoherent L1). A spin that runs
past ``SPIN_LIMIT`` sets an error flag the launcher checks, instead of hanging the GPU.

Backward runs in reverse time the same way. Per step, phase A does each unit's pointwise
derivatives (only its own slice of the carried ∂h, ∂c is needed, in registers) and writes the
pre-activation gradients of the step; after the barrier, phase C multiplies all of them by the
weight columns of the program's units to get its slice of ∂h_{t−1}. Weight gradients are left
to one large GEMM per matrix afterwards (the caller's job). The reset-before GRU needs one more
exchange per step in both directions (r ⊙ h forward, ∂(r ⊙ h) backward), so it has two barriers
per step.

Variable lengths: row b is live at step t while t < lengths[b]; a finished row keeps its state,
writes zero outputs and passes its gradients through unchanged.

Two families. The *streamed* kernels above read each program's slice of the recurrent weights
from L2 every step, K chunk by K chunk (a few chunks in flight), with the product's M = the batch
rows. The *resident* kernels (:func:`resident_forward_kernel`, :func:`resident_backward_kernel`,
GRU with the reset after and LSTM) turn the product around so that the program's weights are its
first operand, 4·BH = 64 rows (one warpgroup MMA's M): loaded once before the time loop, they
stay in shared memory, and each step loads the whole of the other operand (the previous state,
or the step's gate gradients) at once, every load in flight, then runs one chain of warpgroup
MMAs over all of K. They need the weights and one step's operand to fit in shared memory; the
launcher (:mod:`gatedrnn.backends.gpu`) uses them there and the streamed ones elsewhere. The
plain RNN has streamed kernels only (:func:`rnn_forward_kernel`, :func:`rnn_backward_kernel`):
its weights are a quarter of the LSTM's, H × H.

TF32: a float32 operand given to the tensor cores is truncated to TF32. Where the product is TF32
the kernels round their in-loop operands to nearest first (``ROUND``; the caller rounds the
weights), which measured a third to a half of the error.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "f16_operands_kernel",
    "gru_backward_kernel",
    "gru_forward_kernel",
    "lstm_backward_kernel",
    "lstm_forward_kernel",
    "resident_backward_kernel",
    "resident_forward_kernel",
    "rnn_backward_kernel",
    "rnn_forward_kernel",
]


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh through exp of a non-positive argument: no overflow, no cancellation for large |x|
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _sync(cnt_ptr, err_ptr, target, SPIN_LIMIT: tl.constexpr):
    """Grid barrier for one batch group: arrive, then wait until the counter reaches target."""
    tl.debug_barrier()
    tl.atomic_add(cnt_ptr, 1, sem="release")
    if tl.load(err_ptr, volatile=True) == 0:
        spins = 0
        while (tl.atomic_add(cnt_ptr, 0, sem="acquire") < target) & (spins < SPIN_LIMIT):
            spins += 1
        if spins >= SPIN_LIMIT:
            tl.store(err_ptr, 1)
    tl.debug_barrier()


@triton.jit
def _pair_sum(part, XCH, PCNT, ERR, target, SPIN_LIMIT: tl.constexpr):
    """part + the other's part, for the two programs (2p and 2p + 1 of a batch group) that share
    a unit slice, each with its product over half of K: each stores its part in its own slot of
    XCH (one per program, the part's size), the two meet at a barrier of their own (counter
    PCNT: target grows by 2 a step), and each loads the other's. One slot each suffices: a
    program writes its next part only after the grid barrier that follows the other's read. The
    two sums are the same additions (commutative): both programs hold identical states."""
    R: tl.constexpr = part.shape[0]
    C: tl.constexpr = part.shape[1]
    i = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    me = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(XCH + me * (R * C) + i, part)
    _sync(PCNT, ERR, target, SPIN_LIMIT)
    other = tl.load(XCH + (me ^ 1) * (R * C) + i, cache_modifier=".cg")
    return part + other


@triton.jit
def _pair_counter(CNT, SPLIT: tl.constexpr):
    """The pair barrier's counter of this program (:func:`_pair_sum`): after the batch groups'
    grid barrier counters, one per unit slice and batch group."""
    NP_B = tl.num_programs(1)
    return CNT + NP_B + _unit_slice(SPLIT) * NP_B + tl.program_id(1)


@triton.jit
def _own_rows(m2, rows, SPLIT: tl.constexpr):
    """The part of a (units, rows) mask this program stores: all of it, or with SPLIT = 2 (two
    programs holding the same values) the rows of its parity, so that the two share the stores."""
    if SPLIT == 1:  # noqa: SIM108 (compile-time: nothing emitted without a split)
        mine = m2
    else:
        mine = m2 & ((rows % SPLIT) == _k_half(SPLIT))[None, :]
    return mine


@triton.jit
def _async_proxy_fence(x, FENCE: tl.constexpr):
    """``fence.proxy.async.global`` when FENCE (x: any scalar, the asm's dummy operand). TMA
    reads global memory through the async proxy, plain stores write it through the generic one:
    the resident kernels' TMA variant fences after storing their share of the next operand
    (before the barrier's release) and again after the barrier (before the TMA loads). Not under
    the interpreter, which has no inline assembly (and one proxy)."""
    if FENCE:
        tl.inline_asm_elementwise(
            "fence.proxy.async.global; mov.u32 $0, 0;", "=r,r", [x], dtype=tl.int32,
            is_pure=False, pack=1,
        )  # fmt: skip


@triton.jit
def _to_tf32(x, ROUND: tl.constexpr):
    """x rounded to nearest TF32 (10 mantissa bits) when ROUND, else x. A warpgroup MMA in TF32
    reads a float32 operand's upper 19 bits, which truncates: rounding first halves the error.
    For the second operand only: the first (the weights), computed on, would be given to the MMA
    from registers, all of it; the launcher rounds the weights instead (:func:`round_tf32`)."""
    if ROUND:
        # cvt.rna.tf32.f32 in integer arithmetic (inline assembly here made the compiler give up
        # the warpgroup MMA): add half of the dropped 13 bits' range to the magnitude, clear them
        bits = x.to(tl.uint32, bitcast=True)
        x = ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return x


@triton.jit
def _mm(
    acc, a_ptr, a_stride, rows, row_mask, w_ptr, w_k_stride, w_n_stride, cols, col_mask,
    K: tl.constexpr, BK: tl.constexpr, DOT_DTYPE: tl.constexpr, PREC: tl.constexpr,
    ROUND: tl.constexpr,
):  # fmt: skip
    """acc += A[rows, 0:K] @ Wt[0:K, cols], A row-major with row stride a_stride, Wt[k, n] at
    w_ptr + k·w_k_stride + n·w_n_stride. A is read through L2 (.cg): other programs wrote it."""
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_mask = ks < K
        a = tl.load(
            a_ptr + rows[:, None] * a_stride + ks[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        w = tl.load(
            w_ptr + ks[:, None] * w_k_stride + cols[None, :] * w_n_stride,
            mask=k_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        acc = tl.dot(_to_tf32(a, ROUND).to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=PREC)
    return acc


@triton.jit
def _mm_gates(
    acc0, acc1, acc2, acc3, a_ptr, a_stride, rows, row_mask, w_ptr, cols, col_mask,
    NG: tl.constexpr, K: tl.constexpr, BK: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PREC: tl.constexpr, ROUND: tl.constexpr,
):  # fmt: skip
    """acc_g += A[rows, 0:K] @ W[g·K + cols, 0:K]ᵀ for the first NG gates g: one pass over A
    (the state every program reads) feeding the NG products. W is row-major (·, K)."""
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_mask = ks < K
        a = tl.load(
            a_ptr + rows[:, None] * a_stride + ks[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        a = _to_tf32(a, ROUND).to(DOT_DTYPE)
        w_mask = k_mask[:, None] & col_mask[None, :]
        w_tile = w_ptr + ks[:, None] + cols[None, :] * K
        w = tl.load(w_tile, mask=w_mask, other=0.0)
        acc0 = tl.dot(a, w.to(DOT_DTYPE), acc0, input_precision=PREC)
        if NG > 1:
            w = tl.load(w_tile + K * K, mask=w_mask, other=0.0)
            acc1 = tl.dot(a, w.to(DOT_DTYPE), acc1, input_precision=PREC)
        if NG > 2:
            w = tl.load(w_tile + 2 * K * K, mask=w_mask, other=0.0)
            acc2 = tl.dot(a, w.to(DOT_DTYPE), acc2, input_precision=PREC)
        if NG > 3:
            w = tl.load(w_tile + 3 * K * K, mask=w_mask, other=0.0)
            acc3 = tl.dot(a, w.to(DOT_DTYPE), acc3, input_precision=PREC)
    return acc0, acc1, acc2, acc3


@triton.jit
def _units_rows(B, H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, SPLIT: tl.constexpr):
    """This program's hidden units and batch rows and their masks (SPLIT programs in a row share
    the units: :func:`_k_half`)."""
    u = _unit_slice(SPLIT) * BH + tl.arange(0, BH)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    return u, u < H, rows, rows < B


@triton.jit
def _tile(B, H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr):
    """This program's hidden units and batch rows, their masks, the (BB, BH) mask of its slice
    and the slice's offsets in a (B, H) array."""
    u, u_mask, rows, row_mask = _units_rows(B, H, BH, BB, 1)
    return (
        u, u_mask, rows, row_mask, row_mask[:, None] & u_mask[None, :],
        rows[:, None] * H + u[None, :],
    )  # fmt: skip


@triton.jit
def _tile_t(B, H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, SPLIT: tl.constexpr):
    """:func:`_tile` turned around, for the resident kernels' (units, rows) tiles: the (BH, BB)
    mask of the program's slice and the slice's offsets in a (B, H) array."""
    u, u_mask, rows, row_mask = _units_rows(B, H, BH, BB, SPLIT)
    return (
        u, u_mask, rows, row_mask, u_mask[:, None] & row_mask[None, :],
        rows[None, :] * H + u[:, None],
    )  # fmt: skip


@triton.jit
def _load_gates(ptr, H: tl.constexpr, mask, NG: tl.constexpr):
    """The gate blocks at ptr, ptr + H, … (NG of them, 3 or 4) as float32; the fourth is zeros
    when NG is 3."""
    g0 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    g1 = tl.load(ptr + H, mask=mask, other=0.0).to(tl.float32)
    g2 = tl.load(ptr + 2 * H, mask=mask, other=0.0).to(tl.float32)
    if NG > 3:  # noqa: SIM108 (a compile-time branch: the load is not emitted for NG = 3)
        g3 = tl.load(ptr + 3 * H, mask=mask, other=0.0).to(tl.float32)
    else:
        g3 = tl.zeros_like(g2)
    return g0, g1, g2, g3


@triton.jit
def _store_gates(ptr, H: tl.constexpr, mask, NG: tl.constexpr, g0, g1, g2, g3):
    """Store g0, g1, … at ptr, ptr + H, … (the first NG of them): :func:`_load_gates`' inverse."""
    tl.store(ptr, g0, mask=mask)
    tl.store(ptr + H, g1, mask=mask)
    tl.store(ptr + 2 * H, g2, mask=mask)
    if NG > 3:
        tl.store(ptr + 3 * H, g3, mask=mask)


@triton.jit
def _lstm_update(
    x_i, x_f, x_g, x_o, a_i, a_f, a_g, a_o, c, h, live, p_i, p_f, p_o, PEEP: tl.constexpr
):
    """One LSTM step from the input (x) and recurrent (a) pre-activations: the gates i, f, g, o
    and the new c and h, kept where a row is not live. With PEEP, peepholes (Graves 2013): i and
    f also see the previous cell (p_i ⊙ c, p_f ⊙ c), o the new one (p_o ⊙ c'); without, the p
    are not read."""
    if PEEP:
        a_i = a_i + p_i * c
        a_f = a_f + p_f * c
    i = _sigmoid(x_i + a_i)
    f = _sigmoid(x_f + a_f)
    gg = _tanh(x_g + a_g)
    c = tl.where(live, f * c + i * gg, c)
    if PEEP:
        a_o = a_o + p_o * c
    o = _sigmoid(x_o + a_o)
    h = tl.where(live, o * _tanh(c), h)
    return i, f, gg, o, c, h


@triton.jit
def _unit_vectors(
    V, u, u_mask, H: tl.constexpr, BH: tl.constexpr, LOAD: tl.constexpr, COLUMNS: tl.constexpr
):  # fmt: skip
    """The program's units' three float32 vectors from V, (3H,): the LSTM's peepholes
    p_i|p_f|p_o, or the GRU's recurrent bias. As (1, BH) rows for the streamed kernels'
    (rows, units) tiles, or (COLUMNS) as (BH, 1) columns for the resident kernels' (units, rows)
    ones; zeros without LOAD (V is then not read)."""
    if LOAD:
        v0 = tl.load(V + u, mask=u_mask, other=0.0)
        v1 = tl.load(V + H + u, mask=u_mask, other=0.0)
        v2 = tl.load(V + 2 * H + u, mask=u_mask, other=0.0)
    else:
        v0 = tl.zeros((BH,), tl.float32)
        v1 = v0
        v2 = v0
    if COLUMNS:
        v0, v1, v2 = v0[:, None], v1[:, None], v2[:, None]
    else:
        v0, v1, v2 = v0[None, :], v1[None, :], v2[None, :]
    return v0, v1, v2


@triton.jit
def _gru_step_inputs(DY, G, HS, t, B, own, own_g, mask, H: tl.constexpr):
    """What the GRU backward reads for step t: ∂y_t, the saved r, z, n and U_n h + b_hn (or
    r ⊙ h), and h_{t−1}."""
    dy = tl.load(DY + t * B * H + own, mask=mask, other=0.0).to(tl.float32)
    r, z, n, extra = _load_gates(G + t * B * 4 * H + own_g, H, mask, 4)
    h_prev = tl.load(HS + t * B * H + own, mask=mask, other=0.0)
    return dy, r, z, n, extra, h_prev


@triton.jit
def _lstm_step_inputs(DY, G, CS, t, B, own, own_g, mask, H: tl.constexpr):
    """What the LSTM backward reads for step t: ∂y_t, the saved i, f, g, o, and c_{t−1}."""
    dy = tl.load(DY + t * B * H + own, mask=mask, other=0.0).to(tl.float32)
    i, f, gg, o = _load_gates(G + t * B * 4 * H + own_g, H, mask, 4)
    c_prev = tl.load(CS + t * B * H + own, mask=mask, other=0.0)
    return dy, i, f, gg, o, c_prev


@triton.jit
def _live(lens_ptr, rows, row_mask, t, HAS_LENS: tl.constexpr):
    """(BB,) mask of the rows still inside their sequence at step t."""
    if HAS_LENS:
        n = tl.load(lens_ptr + rows, mask=row_mask, other=0)
        live = t < n
    else:
        live = row_mask
    return live


# ---------------------------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------------------------


@triton.jit
def gru_forward_kernel(
    XG,  # (T, B, 3H) x W_ihᵀ + b_ih, any float dtype
    W,  # (3H, H) recurrent weights r|z|n, dtype of the dot
    BHH,  # (3H,) recurrent bias, float32 (zeros without bias)
    HS,  # (T+1, B, H) float32 states: HS[0] = h0 on entry; every step when SAVE, else HS[T]
    Y,  # (T+1, B, H) states as the dot reads them and the output, Y[0] = h0 (may be HS)
    G,  # (T, B, 4H) float32: r|z|n|U_n h + b_hn (after) or r|z|n|r ⊙ h (before)
    LENS,  # (B,) int32 lengths, when HAS_LENS
    CNT,  # (NP_B,) int32 barrier counters, zero on entry
    ERR,  # (1,) int32 error flag, zero on entry
    T, B,
    H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    RESET_AFTER: tl.constexpr, SAVE: tl.constexpr, HAS_LENS: tl.constexpr,
    Y_IS_HS: tl.constexpr, DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, ROUND: tl.constexpr,
    SPIN_LIMIT: tl.constexpr,
):  # fmt: skip
    NP_H = tl.num_programs(0)
    u, u_mask, rows, row_mask, m2, own = _tile(B, H, BH, BB)
    own_xg = rows[:, None] * (3 * H) + u[None, :]
    own_g = rows[:, None] * (4 * H) + u[None, :]
    b_r = tl.load(BHH + u, mask=u_mask, other=0.0)[None, :]
    b_z = tl.load(BHH + H + u, mask=u_mask, other=0.0)[None, :]
    b_n = tl.load(BHH + 2 * H + u, mask=u_mask, other=0.0)[None, :]
    cnt = CNT + tl.program_id(1)
    h = tl.load(HS + own, mask=m2, other=0.0)
    x_r, x_z, x_n, _ = _load_gates(XG + own_xg, H, m2, 3)
    target = 0
    t = 0
    while t < T:
        live = _live(LENS, rows, row_mask, t, HAS_LENS)[:, None]
        zero = tl.zeros((BB, BH), tl.float32)
        acc_r, acc_z, acc_n, _ = _mm_gates(
            zero, zero, zero, zero, Y + t * B * H, H, rows, row_mask, W, u, u_mask,
            3 if RESET_AFTER else 2, H, BK, DOT_DTYPE, PREC, ROUND,
        )  # fmt: skip
        r = _sigmoid(x_r + acc_r + b_r)
        z = _sigmoid(x_z + acc_z + b_z)
        g = G + t * B * 4 * H + own_g
        if RESET_AFTER:
            hn = acc_n + b_n
            n = _tanh(x_n + r * hn)
            if SAVE:
                tl.store(g + 3 * H, hn, mask=m2)
        else:  # r ⊙ h goes to the others first; n after the barrier
            tl.store(g + 3 * H, r * h, mask=m2)
            target += NP_H
            _sync(cnt, ERR, target, SPIN_LIMIT)
            acc_n, _, _, _ = _mm_gates(
                zero, zero, zero, zero, G + t * B * 4 * H + 3 * H, 4 * H, rows, row_mask,
                W + 2 * H * H, u, u_mask, 1, H, BK, DOT_DTYPE, PREC, ROUND,
            )  # fmt: skip
            n = _tanh(x_n + acc_n + b_n)
        h = tl.where(live, (1.0 - z) * n + z * h, h)
        tl.store(Y + (t + 1) * B * H + own, tl.where(live, h, 0.0), mask=m2)
        if SAVE:
            if not Y_IS_HS:
                tl.store(HS + (t + 1) * B * H + own, h, mask=m2)
            _store_gates(g, H, m2, 3, r, z, n, n)
        # the next step's input projections do not depend on the others: load them now
        nxt = m2 & (t + 1 < T)
        x_r, x_z, x_n, _ = _load_gates(XG + (t + 1) * B * 3 * H + own_xg, H, nxt, 3)
        target += NP_H
        _sync(cnt, ERR, target, SPIN_LIMIT)
        t += 1
    tl.store(HS + T * B * H + own, h, mask=m2)


@triton.jit
def gru_backward_kernel(
    DY,  # (T, B, H) gradient of the outputs
    HS,  # (T+1, B, H) float32 states from the forward
    G,  # (T, B, 4H) float32 saved gates
    W,  # (3H, H) recurrent weights
    DXG,  # (T, B, 3H) out: gradients of the input-side pre-activations r|z|n
    DGH,  # (T, B, 3H) out (reset after): r|z|(dn ⊙ r), the recurrent side's; else unused
    DH,  # (B, H) float32: ∂ final state on entry, ∂h0 on exit
    LENS, CNT, ERR,
    T, B,
    H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    RESET_AFTER: tl.constexpr, HAS_LENS: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, ROUND: tl.constexpr, SPIN_LIMIT: tl.constexpr,
):  # fmt: skip
    NP_H = tl.num_programs(0)
    u, u_mask, rows, row_mask, m2, own = _tile(B, H, BH, BB)
    own_g = rows[:, None] * (4 * H) + u[None, :]
    own_x = rows[:, None] * (3 * H) + u[None, :]
    cnt = CNT + tl.program_id(1)
    dh = tl.load(DH + own, mask=m2, other=0.0)
    t = T - 1
    # this step's pointwise inputs; each iteration loads the next step's before its barrier
    dy, r, z, n, extra, h_prev = _gru_step_inputs(DY, G, HS, t, B, own, own_g, m2, H)
    target = 0
    while t >= 0:
        live = _live(LENS, rows, row_mask, t, HAS_LENS)[:, None]
        dh = dh + tl.where(live, dy, 0.0)
        dan = tl.where(live, dh * (1.0 - z) * (1.0 - n * n), 0.0)
        daz = tl.where(live, dh * (h_prev - n) * z * (1.0 - z), 0.0)
        dx = DXG + t * B * 3 * H + own_x
        tl.store(dx + H, daz.to(DXG.dtype.element_ty), mask=m2)
        tl.store(dx + 2 * H, dan.to(DXG.dtype.element_ty), mask=m2)
        carry = tl.where(live, dh * z, dh)
        if RESET_AFTER:
            dar = dan * extra * r * (1.0 - r)
            tl.store(dx, dar.to(DXG.dtype.element_ty), mask=m2)
            dg = DGH + t * B * 3 * H + own_x
            tl.store(dg, dar.to(DGH.dtype.element_ty), mask=m2)
            tl.store(dg + H, daz.to(DGH.dtype.element_ty), mask=m2)
            tl.store(dg + 2 * H, (dan * r).to(DGH.dtype.element_ty), mask=m2)
        r_now = r
        h_now = h_prev
        # the previous step's pointwise inputs do not depend on the others: load them now
        prv = m2 & (t > 0)
        dy, r, z, n, extra, h_prev = _gru_step_inputs(DY, G, HS, t - 1, B, own, own_g, prv, H)
        target += NP_H
        _sync(cnt, ERR, target, SPIN_LIMIT)
        if not RESET_AFTER:
            # ∂(r ⊙ h) = dn · U_n needs every unit's dn; then dr, and r's share of ∂h
            drh = tl.zeros((BB, BH), tl.float32)
            drh = _mm(
                drh, DXG + t * B * 3 * H + 2 * H, 3 * H, rows, row_mask, W + 2 * H * H, H, 1,
                u, u_mask, H, BK, DOT_DTYPE, PREC, ROUND,
            )  # fmt: skip
            dar = drh * h_now * r_now * (1.0 - r_now)
            tl.store(DXG + t * B * 3 * H + own_x, dar.to(DXG.dtype.element_ty), mask=m2)
            carry += drh * r_now
            target += NP_H
            _sync(cnt, ERR, target, SPIN_LIMIT)
            dh = _mm(
                carry, DXG + t * B * 3 * H, 3 * H, rows, row_mask, W, H, 1, u, u_mask, 2 * H,
                BK, DOT_DTYPE, PREC, ROUND,
            )  # fmt: skip
        else:
            dh = _mm(
                carry, DGH + t * B * 3 * H, 3 * H, rows, row_mask, W, H, 1, u, u_mask, 3 * H,
                BK, DOT_DTYPE, PREC, ROUND,
            )  # fmt: skip
        t -= 1
    tl.store(DH + own, dh, mask=m2)


# ---------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------


@triton.jit
def lstm_forward_kernel(
    XG,  # (T, B, 4H) x W_ihᵀ + b_ih + b_hh
    W,  # (4H, H) recurrent weights i|f|g|o
    PP,  # (3H,) float32 peephole weights p_i|p_f|p_o, when PEEP
    HS,  # (T+1, B, H) float32 h: HS[0] = h0 on entry, HS[T] = h_T on exit
    CS,  # (T+1, B, H) float32 c: CS[0] = c0 on entry; every step when SAVE, else CS[T]
    Y,  # (T+1, B, H) h as the dot reads it and the output, Y[0] = h0 (may be HS)
    G,  # (T, B, 4H) float32 gates i|f|g|o after their nonlinearities, when SAVE
    LENS, CNT, ERR,
    T, B,
    H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    SAVE: tl.constexpr, HAS_LENS: tl.constexpr, PEEP: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, ROUND: tl.constexpr, SPIN_LIMIT: tl.constexpr,
):  # fmt: skip
    NP_H = tl.num_programs(0)
    u, u_mask, rows, row_mask, m2, own = _tile(B, H, BH, BB)
    own_g = rows[:, None] * (4 * H) + u[None, :]
    cnt = CNT + tl.program_id(1)
    p_i, p_f, p_o = _unit_vectors(PP, u, u_mask, H, BH, PEEP, False)
    h = tl.load(HS + own, mask=m2, other=0.0)
    c = tl.load(CS + own, mask=m2, other=0.0)
    x_i, x_f, x_g, x_o = _load_gates(XG + own_g, H, m2, 4)
    target = 0
    t = 0
    while t < T:
        live = _live(LENS, rows, row_mask, t, HAS_LENS)[:, None]
        zero = tl.zeros((BB, BH), tl.float32)
        a_i, a_f, a_g, a_o = _mm_gates(
            zero, zero, zero, zero, Y + t * B * H, H, rows, row_mask, W, u, u_mask, 4, H, BK,
            DOT_DTYPE, PREC, ROUND,
        )  # fmt: skip
        i, f, gg, o, c, h = _lstm_update(
            x_i, x_f, x_g, x_o, a_i, a_f, a_g, a_o, c, h, live, p_i, p_f, p_o, PEEP
        )
        tl.store(Y + (t + 1) * B * H + own, tl.where(live, h, 0.0), mask=m2)
        if SAVE:
            tl.store(CS + (t + 1) * B * H + own, c, mask=m2)
            _store_gates(G + t * B * 4 * H + own_g, H, m2, 4, i, f, gg, o)
        nxt = m2 & (t + 1 < T)
        x_i, x_f, x_g, x_o = _load_gates(XG + (t + 1) * B * 4 * H + own_g, H, nxt, 4)
        target += NP_H
        _sync(cnt, ERR, target, SPIN_LIMIT)
        t += 1
    tl.store(HS + T * B * H + own, h, mask=m2)
    tl.store(CS + T * B * H + own, c, mask=m2)


@triton.jit
def lstm_backward_kernel(
    DY,  # (T, B, H) gradient of the outputs
    CS,  # (T+1, B, H) float32 cells from the forward
    G,  # (T, B, 4H) float32 saved gates i|f|g|o
    W,  # (4H, H) recurrent weights
    PP,  # (3H,) float32 peephole weights p_i|p_f|p_o, when PEEP
    DG,  # (T, B, 4H) out: pre-activation gradients i|f|g|o
    DH,  # (B, H) float32: ∂h_T on entry, ∂h0 on exit
    DC,  # (B, H) float32: ∂c_T on entry, ∂c0 on exit
    LENS, CNT, ERR,
    T, B,
    H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    HAS_LENS: tl.constexpr, PEEP: tl.constexpr, DOT_DTYPE: tl.constexpr, PREC: tl.constexpr,
    ROUND: tl.constexpr, SPIN_LIMIT: tl.constexpr,
):  # fmt: skip
    NP_H = tl.num_programs(0)
    u, u_mask, rows, row_mask, m2, own = _tile(B, H, BH, BB)
    own_g = rows[:, None] * (4 * H) + u[None, :]
    cnt = CNT + tl.program_id(1)
    p_i, p_f, p_o = _unit_vectors(PP, u, u_mask, H, BH, PEEP, False)
    dh = tl.load(DH + own, mask=m2, other=0.0)
    dc = tl.load(DC + own, mask=m2, other=0.0)
    t = T - 1
    c = tl.load(CS + (t + 1) * B * H + own, mask=m2, other=0.0)
    dy, i, f, gg, o, c_prev = _lstm_step_inputs(DY, G, CS, t, B, own, own_g, m2, H)
    target = 0
    while t >= 0:
        live = _live(LENS, rows, row_mask, t, HAS_LENS)[:, None]
        dh = dh + tl.where(live, dy, 0.0)
        tc = _tanh(c)
        dao = tl.where(live, dh * tc * o * (1.0 - o), 0.0)
        dc = dc + tl.where(live, dh * o * (1.0 - tc * tc), 0.0)
        if PEEP:  # o saw the new cell
            dc = dc + dao * p_o
        dai = tl.where(live, dc * gg * i * (1.0 - i), 0.0)
        daf = tl.where(live, dc * c_prev * f * (1.0 - f), 0.0)
        dag = tl.where(live, dc * i * (1.0 - gg * gg), 0.0)
        dg = DG + t * B * 4 * H + own_g
        tl.store(dg, dai.to(DG.dtype.element_ty), mask=m2)
        tl.store(dg + H, daf.to(DG.dtype.element_ty), mask=m2)
        tl.store(dg + 2 * H, dag.to(DG.dtype.element_ty), mask=m2)
        tl.store(dg + 3 * H, dao.to(DG.dtype.element_ty), mask=m2)
        dc = tl.where(live, dc * f, dc)
        if PEEP:  # i and f saw the previous cell (dai, daf: zero where not live)
            dc = dc + dai * p_i + daf * p_f
        carry = tl.where(live, 0.0, dh)
        prv = m2 & (t > 0)
        c = c_prev
        dy, i, f, gg, o, c_prev = _lstm_step_inputs(DY, G, CS, t - 1, B, own, own_g, prv, H)
        target += NP_H
        _sync(cnt, ERR, target, SPIN_LIMIT)
        dh = _mm(
            carry, DG + t * B * 4 * H, 4 * H, rows, row_mask, W, H, 1, u, u_mask, 4 * H, BK,
            DOT_DTYPE, PREC, ROUND,
        )  # fmt: skip
        t -= 1
    tl.store(DH + own, dh, mask=m2)
    tl.store(DC + own, dc, mask=m2)


# ---------------------------------------------------------------------------------------------
# The plain RNN (Elman): h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh), act tanh or ReLU
# ---------------------------------------------------------------------------------------------


@triton.jit
def _activate(a, RELU: tl.constexpr):
    """tanh(a), or with RELU max(a, 0)."""
    if RELU:  # noqa: SIM108 (a compile-time branch)
        h = tl.maximum(a, 0.0)
    else:
        h = _tanh(a)
    return h


@triton.jit
def rnn_forward_kernel(
    XG,  # (T, B, H) x W_ihᵀ + b_ih + b_hh
    W,  # (H, H) recurrent weights
    HS,  # (T+1, B, H) float32 states: HS[0] = h0 on entry; every step when SAVE, else HS[T]
    Y,  # (T+1, B, H) states as the dot reads them and the output, Y[0] = h0 (may be HS)
    LENS, CNT, ERR,
    T, B,
    H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    RELU: tl.constexpr, SAVE: tl.constexpr, HAS_LENS: tl.constexpr, Y_IS_HS: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, ROUND: tl.constexpr, SPIN_LIMIT: tl.constexpr,
):  # fmt: skip
    NP_H = tl.num_programs(0)
    u, u_mask, rows, row_mask, m2, own = _tile(B, H, BH, BB)
    cnt = CNT + tl.program_id(1)
    h = tl.load(HS + own, mask=m2, other=0.0)
    x = tl.load(XG + own, mask=m2, other=0.0).to(tl.float32)
    target = 0
    t = 0
    while t < T:
        live = _live(LENS, rows, row_mask, t, HAS_LENS)[:, None]
        zero = tl.zeros((BB, BH), tl.float32)
        a, _, _, _ = _mm_gates(
            zero, zero, zero, zero, Y + t * B * H, H, rows, row_mask, W, u, u_mask, 1, H, BK,
            DOT_DTYPE, PREC, ROUND,
        )  # fmt: skip
        h = tl.where(live, _activate(x + a, RELU), h)
        tl.store(Y + (t + 1) * B * H + own, tl.where(live, h, 0.0), mask=m2)
        if SAVE and not Y_IS_HS:
            tl.store(HS + (t + 1) * B * H + own, h, mask=m2)
        # the next step's input projection does not depend on the others: load it now
        nxt = m2 & (t + 1 < T)
        x = tl.load(XG + (t + 1) * B * H + own, mask=nxt, other=0.0).to(tl.float32)
        target += NP_H
        _sync(cnt, ERR, target, SPIN_LIMIT)
        t += 1
    tl.store(HS + T * B * H + own, h, mask=m2)


@triton.jit
def rnn_backward_kernel(
    DY,  # (T, B, H) gradient of the outputs
    HS,  # (T+1, B, H) float32 states from the forward
    W,  # (H, H) recurrent weights
    DA,  # (T, B, H) out: gradients of the pre-activations
    DH,  # (B, H) float32: ∂ final state on entry, ∂h0 on exit
    LENS, CNT, ERR,
    T, B,
    H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    RELU: tl.constexpr, HAS_LENS: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, ROUND: tl.constexpr, SPIN_LIMIT: tl.constexpr,
):  # fmt: skip
    NP_H = tl.num_programs(0)
    u, u_mask, rows, row_mask, m2, own = _tile(B, H, BH, BB)
    cnt = CNT + tl.program_id(1)
    dh = tl.load(DH + own, mask=m2, other=0.0)
    t = T - 1
    # this step's ∂y and h_t (act' from the output: 1 − h² for tanh, h > 0 for ReLU, as torch's
    # backward of each); each iteration loads the next step's before its barrier
    dy = tl.load(DY + t * B * H + own, mask=m2, other=0.0).to(tl.float32)
    h = tl.load(HS + (t + 1) * B * H + own, mask=m2, other=0.0)
    target = 0
    while t >= 0:
        live = _live(LENS, rows, row_mask, t, HAS_LENS)[:, None]
        dh = dh + tl.where(live, dy, 0.0)
        if RELU:
            da = tl.where(live & (h > 0.0), dh, 0.0)
        else:
            da = tl.where(live, dh * (1.0 - h * h), 0.0)
        tl.store(DA + t * B * H + own, da.to(DA.dtype.element_ty), mask=m2)
        carry = tl.where(live, 0.0, dh)
        prv = m2 & (t > 0)
        dy = tl.load(DY + (t - 1) * B * H + own, mask=prv, other=0.0).to(tl.float32)
        h = tl.load(HS + t * B * H + own, mask=prv, other=0.0)
        target += NP_H
        _sync(cnt, ERR, target, SPIN_LIMIT)
        dh = _mm(
            carry, DA + t * B * H, H, rows, row_mask, W, H, 1, u, u_mask, H, BK, DOT_DTYPE, PREC,
            ROUND,
        )  # fmt: skip
        t -= 1
    tl.store(DH + own, dh, mask=m2)


# ---------------------------------------------------------------------------------------------
# The resident kernels: weights on chip (GRU with the reset after, LSTM)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _unit_slice(SPLIT: tl.constexpr):
    """Which slice of BH hidden units this program owns: its number, or with SPLIT = 2 its
    pair's (:func:`_k_half`)."""
    return tl.program_id(0) // SPLIT


@triton.jit
def _k_half(SPLIT: tl.constexpr):
    """Which part of K this program multiplies over: with SPLIT = 2 the programs 2p and 2p + 1
    share unit slice p, each over half of K (:func:`_pair_sum` adds their products)."""
    if SPLIT == 1:  # noqa: SIM108 (compile-time: nothing emitted without a split)
        half = 0
    else:
        half = tl.program_id(0) % SPLIT
    return half


@triton.jit
def _gate_blocks_index(BH: tl.constexpr, FOLD: tl.constexpr, SPLIT: tl.constexpr):
    """For the FOLD·4·BH rows of a resident kernel's weight operand, (K range, gate, unit) blocks:
    each row's K range, gate and hidden unit."""
    i = tl.arange(0, FOLD * 4 * BH)
    return i // (4 * BH), (i // BH) % 4, _unit_slice(SPLIT) * BH + i % BH


@triton.jit
def _gate_rows(
    W, H: tl.constexpr, BH: tl.constexpr, K0, KP: tl.constexpr, NG: tl.constexpr,
    FOLD: tl.constexpr, SPLIT: tl.constexpr, KC: tl.constexpr, c: tl.constexpr,
):  # fmt: skip
    """Chunk c (KC wide) of this program's rows of the recurrent weights (rows g·H + u of W for
    its units u) over its part of K (KP wide from K0: all of it, or with SPLIT = 2 a half), gate-
    major as one (FOLD·4·BH, KC) tile: row (f·4 + g)·BH + j, column k holds
    W[g·H + p·BH + j, K0 + f·KP / FOLD + c·KC + k]; zeros past H and, for a three-gate cell, in
    the fourth block."""
    part, gate, unit = _gate_blocks_index(BH, FOLD, SPLIT)
    k = K0 + part[:, None] * (KP // FOLD) + c * KC + tl.arange(0, KC)[None, :]
    mask = ((gate < NG) & (unit < H))[:, None] & (k < H)
    return tl.load(W + (gate * H + unit)[:, None] * H + k, mask=mask, other=0.0)


@triton.jit
def _fold_diagonal(acc, R: tl.constexpr, BB: tl.constexpr):
    """Σ_f of the diagonal blocks of a (2·R, 2·BB) product whose rows are (K range f, r) and
    columns (K range f', batch row): the (R, BB) product over the whole of K."""
    x = tl.permute(tl.reshape(acc, (2, R, 2, BB)), (1, 3, 0, 2))  # [r, row, f, f']
    f_0, f_1 = tl.split(x)  # f' = 0 and f' = 1
    diagonal_0, _ = tl.split(f_0)
    _, diagonal_1 = tl.split(f_1)
    return diagonal_0 + diagonal_1


@triton.jit
def _gate_blocks(acc, BH: tl.constexpr, BB: tl.constexpr):
    """The four (BH, BB) gate blocks of a gate-major (4·BH, BB) product."""
    x = tl.permute(tl.reshape(acc, (2, 2, BH, BB)), (2, 3, 0, 1))  # [unit, row, g // 2, g % 2]
    even, odd = tl.split(x)
    g0, g2 = tl.split(even)
    g1, g3 = tl.split(odd)
    return g0, g1, g2, g3


@triton.jit
def _gate_columns(
    W, H: tl.constexpr, BH: tl.constexpr, K0, KP: tl.constexpr, NG: tl.constexpr,
    FOLD: tl.constexpr, SPLIT: tl.constexpr, KC: tl.constexpr, c: tl.constexpr,
):  # fmt: skip
    """Chunk c (KC wide) of this program's columns of the recurrent weights over its part of K
    (as :func:`_gate_rows`), one block per gate and K range: row (f·4 + g)·BH + j, column k holds
    W[g·H + K0 + f·KP / FOLD + c·KC + k, p·BH + j], a (FOLD·4·BH, KC) tile; zeros past H and in
    a three-gate cell's fourth blocks."""
    part, gate, unit = _gate_blocks_index(BH, FOLD, SPLIT)
    k = K0 + part[:, None] * (KP // FOLD) + c * KC + tl.arange(0, KC)[None, :]
    mask = ((gate < NG) & (unit < H))[:, None] & (k < H)
    return tl.load(W + (gate[:, None] * H + k) * H + unit[:, None], mask=mask, other=0.0)


@triton.jit
def _operand_chunk(
    SRC, step, ok, k0, RING, r0, scale, c: tl.constexpr, KC: tl.constexpr, H: tl.constexpr,
    KP: tl.constexpr, DOT_DTYPE: tl.constexpr, ROUND: tl.constexpr, TMA: tl.constexpr,
    SCALED: tl.constexpr,
):  # fmt: skip
    """Chunk c of a resident kernel's per-step second operand, (KC, columns): row k of column n
    is SRC[step[n] + c·KC + k], which lies k0[n] + c·KC + k into its H (zero past H or where
    not ok[n]). With TMA, the same chunk read by the tensor memory accelerator from the ring's
    row blocks r0 … (RING a descriptor of (blocks, batch rows, KP / FOLD) boxes (columns / BB,
    BB, KC), laid out by :func:`_ring_store`, already rounded) straight into shared memory,
    where the MMA reads it: no registers on the way. SCALED (not with TMA): column n multiplied
    by scale[n] before the conversion to DOT_DTYPE (the float16 backward's, :func:`_row_scales`)."""
    if TMA:
        box = RING.load([r0, 0, c * KC])  # (FOLD·blocks, BB, KC)
        return tl.trans(tl.reshape(box, (step.shape[0], KC)))
    k = c * KC + tl.arange(0, KC)
    if KP == H:  # noqa: SIM108 (compile-time: the k mask is not emitted)
        mask = ok[None, :]
    else:
        mask = (k0[None, :] + k[:, None] < H) & ok[None, :]
    d = tl.load(SRC + step[None, :] + k[:, None], mask=mask, other=0.0, cache_modifier=".cg")
    if SCALED:
        d = d * scale[None, :]
    return _to_tf32(d, ROUND).to(DOT_DTYPE)


@triton.jit
def _ring_store(
    RING_PTR, r0, BT, u, mask, value, BB: tl.constexpr, KP: tl.constexpr, FOLD: tl.constexpr,
    BLOCKS: tl.constexpr, ROUND: tl.constexpr,
):  # fmt: skip
    """Store the program's (units, batch rows) tile value (mask: its valid part) where the TMA
    variant's next operand (:func:`_operand_chunk`) reads it, rounded to TF32 if ROUND. The ring
    is (blocks, BT, KP / FOLD), BT = min(B, BB) batch rows a block; a slot holds, per batch
    tile, FOLD·BLOCKS blocks (K range f, block g), and unit u's value for local batch row j goes
    to block r0 + f·BLOCKS, row j, column u − f·KP / FOLD, f = u // (KP / FOLD); r0 is the
    slot's first block for this batch tile, plus g for block g (the backward's gates; the
    forward has one). With B < BB the boxes' rows past B are out of bounds, which TMA fills with
    zeros without reading memory (at B = 1 a sixteenth of the traffic). What is never stored
    (past H or B, a three-gate cell's fourth block) stays the zero it was allocated as."""
    KF: tl.constexpr = KP // FOLD
    f = u // KF
    row = (r0 + f * BLOCKS)[:, None] * BT + tl.arange(0, BB)[None, :]
    dst = RING_PTR + row * KF + (u - f * KF)[:, None]
    tl.store(dst, _to_tf32(value, ROUND).to(RING_PTR.dtype.element_ty), mask=mask)


@triton.jit
def _ring_store_gates(
    RING_PTR, r0, BT, u, mine, g0, g1, g2, g3, t, BB: tl.constexpr, KP: tl.constexpr,
    KR: tl.constexpr, ROUND: tl.constexpr, FENCE: tl.constexpr, LSTM: tl.constexpr,
):  # fmt: skip
    """The backward's gate blocks g0, g1, g2 (and the LSTM's g3) into the ring's blocks r0 …
    (:func:`_ring_store`, KR K ranges, 4 blocks a range), then the proxy fence that orders them
    before the TMA loads of other programs."""
    _ring_store(RING_PTR, r0, BT, u, mine, g0, BB, KP, KR, 4, ROUND)
    _ring_store(RING_PTR, r0 + 1, BT, u, mine, g1, BB, KP, KR, 4, ROUND)
    _ring_store(RING_PTR, r0 + 2, BT, u, mine, g2, BB, KP, KR, 4, ROUND)
    if LSTM:
        _ring_store(RING_PTR, r0 + 3, BT, u, mine, g3, BB, KP, KR, 4, ROUND)
    _async_proxy_fence(t, FENCE)


@triton.jit
def _weight_chunk(
    W, H: tl.constexpr, BH: tl.constexpr, K0, KP: tl.constexpr, NG: tl.constexpr,
    FOLD: tl.constexpr, SPLIT: tl.constexpr, KC: tl.constexpr, c: tl.constexpr,
    COLUMNS: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """Chunk c of the program's gate rows (:func:`_gate_rows`, the forward's) or, with COLUMNS,
    its gate columns (:func:`_gate_columns`, the backward's), in the product's dtype."""
    if COLUMNS:
        tile = _gate_columns(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, c)
    else:
        tile = _gate_rows(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, c)
    return tile.to(DOT_DTYPE)


@triton.jit
def _weight_tiles(
    W, H: tl.constexpr, BH: tl.constexpr, K0, KP: tl.constexpr, NG: tl.constexpr,
    FOLD: tl.constexpr, SPLIT: tl.constexpr, CHUNKS: tl.constexpr, COLUMNS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """A resident kernel's weights over its part of K (KP wide from K0) in CHUNKS (1, 2, 4 or 8)
    K chunks (:func:`_weight_chunk`): eight tiles, those past CHUNKS repeating the first
    (unused). Rounded to TF32 by the caller."""
    KC: tl.constexpr = KP // FOLD // CHUNKS
    w0 = _weight_chunk(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, 0, COLUMNS, DOT_DTYPE)
    w1 = w0
    w2 = w0
    w3 = w0
    w4 = w0
    w5 = w0
    w6 = w0
    w7 = w0
    if CHUNKS > 1:
        w1 = _weight_chunk(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, 1, COLUMNS, DOT_DTYPE)
    if CHUNKS > 2:
        w2 = _weight_chunk(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, 2, COLUMNS, DOT_DTYPE)
        w3 = _weight_chunk(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, 3, COLUMNS, DOT_DTYPE)
    if CHUNKS > 4:
        w4 = _weight_chunk(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, 4, COLUMNS, DOT_DTYPE)
        w5 = _weight_chunk(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, 5, COLUMNS, DOT_DTYPE)
        w6 = _weight_chunk(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, 6, COLUMNS, DOT_DTYPE)
        w7 = _weight_chunk(W, H, BH, K0, KP, NG, FOLD, SPLIT, KC, 7, COLUMNS, DOT_DTYPE)
    return w0, w1, w2, w3, w4, w5, w6, w7


@triton.jit
def _accumulate(product, w, d, zero, PREC: tl.constexpr, SEPARATE: tl.constexpr):
    """product + w · d: chained through the MMA's accumulator, or (SEPARATE) as a product of its
    own, added. Triton lays a dot whose result feeds another dot out with all warps along M
    (for attention's chains): at 8 warps the 64-row product is then held and computed twice,
    and converted before the last chunk. A separate product, whose accumulator is a zero Triton
    cannot see as one (else it folds the sum back into a chain), keeps the 4 × 2 layout."""
    if SEPARATE:
        product += tl.dot(w, d, zero, input_precision=PREC)
    else:
        product = tl.dot(w, d, product, input_precision=PREC)
    return product


@triton.jit
def _chunked_product(
    w0, w1, w2, w3, w4, w5, w6, w7, SRC, step, ok, k0, RING, r0, scale,
    H: tl.constexpr, KP: tl.constexpr, FOLD: tl.constexpr, CHUNKS: tl.constexpr,
    SEPARATE: tl.constexpr, DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, ROUND: tl.constexpr,
    TMA: tl.constexpr, SCALED: tl.constexpr,
):  # fmt: skip
    """Σ_c w_c · chunk c of the step's second operand (:func:`_operand_chunk`): one warpgroup
    MMA per chunk, each chunk loaded just before its product, so that one chunk's buffer is
    live at a time; the products chained or SEPARATE (:func:`_accumulate`)."""
    KC: tl.constexpr = KP // FOLD // CHUNKS
    d = _operand_chunk(
        SRC, step, ok, k0, RING, r0, scale, 0, KC, H, KP, DOT_DTYPE, ROUND, TMA, SCALED
    )
    product = tl.dot(w0, d, input_precision=PREC)
    zero = tl.broadcast_to((step.to(tl.float32) * 0.0)[None, :], product.shape)
    if CHUNKS > 1:
        d = _operand_chunk(
            SRC, step, ok, k0, RING, r0, scale, 1, KC, H, KP, DOT_DTYPE, ROUND, TMA, SCALED
        )
        product = _accumulate(product, w1, d, zero, PREC, SEPARATE)
    if CHUNKS > 2:
        d = _operand_chunk(
            SRC, step, ok, k0, RING, r0, scale, 2, KC, H, KP, DOT_DTYPE, ROUND, TMA, SCALED
        )
        product = _accumulate(product, w2, d, zero, PREC, SEPARATE)
        d = _operand_chunk(
            SRC, step, ok, k0, RING, r0, scale, 3, KC, H, KP, DOT_DTYPE, ROUND, TMA, SCALED
        )
        product = _accumulate(product, w3, d, zero, PREC, SEPARATE)
    if CHUNKS > 4:
        d = _operand_chunk(
            SRC, step, ok, k0, RING, r0, scale, 4, KC, H, KP, DOT_DTYPE, ROUND, TMA, SCALED
        )
        product = _accumulate(product, w4, d, zero, PREC, SEPARATE)
        d = _operand_chunk(
            SRC, step, ok, k0, RING, r0, scale, 5, KC, H, KP, DOT_DTYPE, ROUND, TMA, SCALED
        )
        product = _accumulate(product, w5, d, zero, PREC, SEPARATE)
        d = _operand_chunk(
            SRC, step, ok, k0, RING, r0, scale, 6, KC, H, KP, DOT_DTYPE, ROUND, TMA, SCALED
        )
        product = _accumulate(product, w6, d, zero, PREC, SEPARATE)
        d = _operand_chunk(
            SRC, step, ok, k0, RING, r0, scale, 7, KC, H, KP, DOT_DTYPE, ROUND, TMA, SCALED
        )
        product = _accumulate(product, w7, d, zero, PREC, SEPARATE)
    return product


@triton.jit
def resident_forward_kernel(
    XG,  # (T, B, NG·H) input projections (+ biases: b_ih for the GRU, b_ih + b_hh for the LSTM)
    W,  # (NG·H, H) recurrent weights r|z|n or i|f|g|o
    BHH,  # (3H,) float32: the GRU's recurrent bias (zeros without); the LSTM's peepholes if PEEP
    HS,  # (T+1, B, H) float32 h: HS[0] = h0 on entry; every step for a saving GRU, else HS[T]
    CS,  # (T+1, B, H) float32 c (LSTM): CS[0] = c0 on entry; every step when SAVE, else CS[T]
    Y,  # (T+1, B, H) states as the product reads them and the output, Y[0] = h0 (may be HS)
    G,  # (T, B, 4H) float32 when SAVE: r|z|n|U_n h + b_hn (GRU), i|f|g|o (LSTM)
    RING,  # TMA: descriptor of the state ring (2 slots, _ring_store's layout), slot 0 = h0
    RING_PTR,  # TMA: the ring itself, in DOT_DTYPE, zeros where never stored
    XCH,  # SPLIT = 2: float32, a (4·BH·BB) slot per program for _pair_sum
    HQ,  # F16: (2, B, H) float16, the state scaled as the product reads it, slot t % 2 = h_t
    SCALE,  # F16: float32 (2,): the state's scale, and 1 / (the weights' scale × the state's)
    LENS, CNT, ERR,
    T, B,
    H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, KP: tl.constexpr, FOLD: tl.constexpr,
    SPLIT: tl.constexpr, CHUNKS: tl.constexpr, SEPARATE: tl.constexpr, TMA: tl.constexpr,
    FENCE: tl.constexpr, F16: tl.constexpr, LSTM: tl.constexpr, PEEP: tl.constexpr,
    SAVE: tl.constexpr, HAS_LENS: tl.constexpr, Y_IS_HS: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, ROUND: tl.constexpr, SPIN_LIMIT: tl.constexpr,
):  # fmt: skip
    """The forward of :func:`gru_forward_kernel` (reset after) and :func:`lstm_forward_kernel`
    (PEEP: with peepholes) with the product turned around: each step computes
    gatesᵀ (4·BH, BB) = W_p (4·BH, H) · hᵀ (H, BB), where W_p, the program's gate rows, is loaded
    once before the time loop and stays in shared memory (it is the product's first operand,
    which the tensor cores read from there: on Hopper one warpgroup MMA chain over the whole of
    K), and hᵀ, the previous state of the program's batch rows, is loaded whole each step
    (CHUNKS = 1), every load in flight at once. The pointwise work runs on (units, rows) tiles.
    Needs 4·BH·KP weights and KP·BB states in shared memory: the launcher uses it only where they
    fit (BH = 16, so 4·BH = 64 rows, one warpgroup's M).

    FOLD = 2 (the launcher's choice where FOLD = 1 does not fit, e.g. float32 at H = 1024, B ≤ 16)
    halves a program's weights: BH = 8 units, the two halves of K become two 32-row blocks of the
    64-row operand, the state's two halves of K sit side by side as (KP / 2, 2·BB), and the
    product's two diagonal blocks are summed. CHUNKS = 2, 4 or 8 loads the state in that many K
    chunks per step, one product each (:func:`_chunked_product`, as the backward's gradients),
    the weights held as as many tiles: only one chunk of the state needs shared memory, which is
    what would put float32 at H = 1024, B = 64 on chip (folded, 4 chunks). Not yet the
    launcher's choice (``TUNING["forward_chunks"]`` asks for it): not yet timed on a GPU.

    TMA (``TUNING["tma"]``, not yet timed either): the state operand is read by the tensor
    memory accelerator straight into shared memory, not through registers (what every chunked
    kernel spills), from a two-slot ring in the operand's own layout, which each program writes
    its share of, rounded, next to its output (:func:`_ring_store`); FENCE orders the two
    memory proxies (:func:`_async_proxy_fence`).

    SPLIT = 2 (``TUNING["split"]``, not yet timed): two programs per unit slice, each with the
    weights and the state over half of K (half the shared memory, half the state read each step:
    what would put float32 at H = 1024, B = 64 on chip unfolded); the two add their products
    (:func:`_pair_sum`: a second, two-program barrier a step), then both run the slice's
    pointwise work and each stores the batch rows of its parity (:func:`_own_rows`).

    F16 (``TUNING["f16"]``, float32 layers; not yet timed): the product in float16 with float32
    accumulation, as accurate as TF32's (both round to 10 mantissa bits) where float16's range
    holds, which power-of-two scales make sure of: W holds the weights × 2^a (the largest in
    [2^14, 2^15)), HQ each step's state × 2^b (|h| ≤ max(1, |h0|) ≤ 2^(14 − b), a bound the GRU's
    convex update and the LSTM's o·tanh(c) keep), and the product is multiplied back by
    2^−(a+b) in float32. Half of TF32's weights and state in shared memory and half the state
    read each step, as bfloat16: what puts float32 at H = 1024, B = 64 on chip unfolded. The
    layer's output and carried state stay float32; only the product's operands are float16."""
    NP_H = tl.num_programs(0)
    NG: tl.constexpr = 4 if LSTM else 3
    KS: tl.constexpr = KP // SPLIT  # the program's part of K, from K0
    K0 = _k_half(SPLIT) * KS
    u, u_mask, rows, row_mask, m2, own = _tile_t(B, H, BH, BB, SPLIT)
    mine = _own_rows(m2, rows, SPLIT)
    own_xg = rows[None, :] * (NG * H) + u[:, None]
    own_g = rows[None, :] * (4 * H) + u[:, None]
    # the state operand (KS / FOLD, FOLD·BB): column (f, b) of row k is h[b, K0 + f·KS / FOLD + k];
    # its 2-D offsets are formed in the loop from these column offsets
    col = tl.arange(0, FOLD * BB)
    col_k0 = K0 + (col // BB) * (KS // FOLD)
    col_row = tl.program_id(1) * BB + col % BB
    h_cols = col_row * H + col_k0
    h_ok = col_row < B
    # the gate rows, one tile per chunk (rounded to TF32 by the caller if ROUND)
    w0, w1, w2, w3, w4, w5, w6, w7 = _weight_tiles(
        W, H, BH, K0, KS, NG, FOLD, SPLIT, CHUNKS, False, DOT_DTYPE
    )
    cnt = CNT + tl.program_id(1)
    pair_cnt = _pair_counter(CNT, SPLIT)
    h = tl.load(HS + own, mask=m2, other=0.0)
    c = tl.load(CS + own, mask=m2, other=0.0) if LSTM else h
    # the GRU's recurrent bias, or the LSTM's peepholes in its place
    b_0, b_1, b_2 = _unit_vectors(BHH, u, u_mask, H, BH, PEEP or not LSTM, True)
    x0, x1, x2, x3 = _load_gates(XG + own_xg, H, m2, NG)
    # the TMA ring: a slot per step parity, this batch tile's SPLIT·FOLD blocks in each (K
    # ranges), the program reading its FOLD from K0's
    slot_blocks = tl.num_programs(1) * (SPLIT * FOLD)
    tile_r0 = tl.program_id(1) * (SPLIT * FOLD)
    read_r0 = tile_r0 + _k_half(SPLIT) * FOLD
    BT = tl.minimum(B, BB)
    if F16:
        h_scale = tl.load(SCALE)
        unscale = tl.load(SCALE + 1)
    target = 0
    pair_target = 0
    t = 0
    while t < T:
        live = _live(LENS, rows, row_mask, t, HAS_LENS)[None, :]
        if F16:
            src = HQ
            step = (t % 2) * B * H + h_cols
        else:
            src = Y
            step = t * B * H + h_cols
        product = _chunked_product(
            w0, w1, w2, w3, w4, w5, w6, w7, src, step, h_ok, col_k0,
            RING, (t % 2) * slot_blocks + read_r0, h_ok,
            H, KS, FOLD, CHUNKS, SEPARATE, DOT_DTYPE, PREC, ROUND, TMA, False,
        )  # fmt: skip
        if FOLD == 2:
            product = _fold_diagonal(product, 4 * BH, BB)
        if SPLIT == 2:
            pair_target += 2
            product = _pair_sum(product, XCH, pair_cnt, ERR, pair_target, SPIN_LIMIT)
        if F16:
            product = product * unscale
        a0, a1, a2, a3 = _gate_blocks(product, BH, BB)
        g = G + t * B * 4 * H + own_g
        if LSTM:
            i, f, gg, o, c, h = _lstm_update(
                x0, x1, x2, x3, a0, a1, a2, a3, c, h, live, b_0, b_1, b_2, PEEP
            )
            if SAVE:
                tl.store(CS + (t + 1) * B * H + own, c, mask=mine)
                _store_gates(g, H, mine, 4, i, f, gg, o)
        else:
            r = _sigmoid(x0 + a0 + b_0)
            z = _sigmoid(x1 + a1 + b_1)
            hn = a2 + b_2
            n = _tanh(x2 + r * hn)
            h = tl.where(live, (1.0 - z) * n + z * h, h)
            if SAVE:
                if not Y_IS_HS:
                    tl.store(HS + (t + 1) * B * H + own, h, mask=mine)
                _store_gates(g, H, mine, 4, r, z, n, hn)
        out = tl.where(live, h, 0.0)
        tl.store(Y + (t + 1) * B * H + own, out, mask=mine)
        operand = out
        if F16:
            operand = out * h_scale
        if TMA:
            r0 = ((t + 1) % 2) * slot_blocks + tile_r0
            _ring_store(RING_PTR, r0, BT, u, mine, operand, BB, KP, SPLIT * FOLD, 1, ROUND)
            _async_proxy_fence(t, FENCE)
        elif F16:
            tl.store(HQ + ((t + 1) % 2) * B * H + own, operand.to(tl.float16), mask=mine)
        nxt = m2 & (t + 1 < T)
        x0, x1, x2, x3 = _load_gates(XG + (t + 1) * B * NG * H + own_xg, H, nxt, NG)
        target += NP_H
        _sync(cnt, ERR, target, SPIN_LIMIT)
        if TMA:
            _async_proxy_fence(t, FENCE)
        t += 1
    tl.store(HS + T * B * H + own, h, mask=mine)
    if LSTM:
        tl.store(CS + T * B * H + own, c, mask=mine)


@triton.jit
def _gate_diagonal(acc, BH: tl.constexpr, BB: tl.constexpr):
    """Σ_g of the diagonal blocks of a (4·BH, 4·BB) product whose rows are (gate, unit) and
    columns (gate, batch row): the (BH, BB) sum over gates of each gate's own product. Taken
    with splits, not reductions: a reduction's result layout spread into the loop-carried ∂h
    and ∂c and replicated them across threads (255 registers and spills at H = 1024)."""
    # [g // 2, g % 2, unit, g' // 2, g' % 2, row] → [unit, row, g // 2, g' // 2, g % 2, g' % 2]
    x = tl.permute(tl.reshape(acc, (2, 2, BH, 2, 2, BB)), (2, 5, 0, 3, 1, 4))
    c0, c1 = tl.split(x)
    even, _ = tl.split(c0)
    _, odd = tl.split(c1)
    y = even + odd  # [unit, row, g // 2, g' // 2], g % 2 = g' % 2
    c0, c1 = tl.split(y)
    even, _ = tl.split(c0)
    _, odd = tl.split(c1)
    return even + odd


@triton.jit
def _pow2(exponent):
    """2^exponent as float32, formed in the exponent bits (exponent in [−126, 127])."""
    return ((exponent + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _exponent(m):
    """e of a positive normal m = f·2^e, f in [0.5, 1) (the exponent bits, less 126)."""
    return ((m.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 126


@triton.jit
def _row_scales(big):
    """For each largest magnitude m·2^e (m in [0.5, 1)): 2^(14 − e), which brings it into
    [2^13, 2^14), and 2^(e − 14); 1 and 1 for a zero (a row without gradient) or subnormal
    largest value. An infinite or NaN one gives an infinite or NaN row, as the float32 product
    would."""
    e = _exponent(big)  # −126 for a zero or subnormal one, 129 for inf or NaN
    e = tl.where(e == -126, 14, e)
    scale = _pow2(tl.minimum(tl.maximum(14 - e, -126), 127))
    unscale = _pow2(tl.minimum(tl.maximum(e - 14, -126), 127))
    return scale, unscale


@triton.jit
def resident_backward_kernel(
    DY,  # (T, B, H) gradient of the outputs
    HS,  # (T+1, B, H) float32 states h (GRU)
    CS,  # (T+1, B, H) float32 cells c (LSTM)
    G,  # (T, B, 4H) float32 saved gates: r|z|n|U_n h + b_hn (GRU), i|f|g|o (LSTM)
    W,  # (NG·H, H) recurrent weights
    PP,  # (3H,) float32 peephole weights p_i|p_f|p_o (LSTM), when PEEP
    DX,  # (T, B, NG·H) out: input-side pre-activation gradients (GRU r|z|n; LSTM i|f|g|o)
    DR,  # (T, B, 3H) out (GRU): the recurrent side's r|z|(dn ⊙ r); for the LSTM, DX again
    DH,  # (B, H) float32: ∂ final h on entry, ∂h0 on exit
    DC,  # (B, H) float32 (LSTM): ∂c_T on entry, ∂c0 on exit
    RING,  # TMA: descriptor of the gradients' ring (2 slots, _ring_store's layout, 4 blocks)
    RING_PTR,  # TMA: the ring itself, in DOT_DTYPE, zeros where never stored; F16 = 2 without
    # TMA: (B, NG·H) float16, the step's gradients scaled as the product reads them
    XCH,  # SPLIT = 2: float32, a slot per program for _pair_sum's (BH, BB) parts
    DMAX,  # F16: (T, B) float32 zeros: each step's largest |operand| per batch row, gathered
    SCALE,  # F16: float32 (1,): 1 / the weights' scale
    LENS, CNT, ERR,
    T, B,
    H: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, KP: tl.constexpr, FOLD: tl.constexpr,
    SPLIT: tl.constexpr, CHUNKS: tl.constexpr, SEPARATE: tl.constexpr, TMA: tl.constexpr,
    FENCE: tl.constexpr, F16: tl.constexpr, LSTM: tl.constexpr, PEEP: tl.constexpr,
    HAS_LENS: tl.constexpr, DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, ROUND: tl.constexpr,
    SPIN_LIMIT: tl.constexpr,
):  # fmt: skip
    """The backward of :func:`gru_backward_kernel` (reset after) and
    :func:`lstm_backward_kernel` (PEEP: with peepholes) with the program's weight columns on
    chip. ∂h_{t−1} = carry + D_t · W[:, u] (D_t the step's recurrent-side pre-activation
    gradients, NG·H wide) as one warpgroup MMA: the columns of the program's units, one (BH, H)
    block per gate, stacked into the (4·BH, KP) first operand and kept in shared memory from
    before the time loop; the second operand (KP, 4·BB) holds D_t's gate blocks side by side,
    loaded whole each step. The product pairs every gate's weights with every gate's gradients;
    the sum of its diagonal blocks is the answer (three quarters of the MMA work is thrown away,
    which costs less than the round trips a K loop would take).

    Where that does not fit in shared memory (:func:`~gatedrnn.backends.gpu._resident_sizes`):
    FOLD = 2 halves the weights (8 units per program; the two halves of K become two 32-row
    blocks of the first operand and two column blocks of the second, eight diagonal blocks
    summed), and CHUNKS = 2, 4 or 8 loads the second operand in that many K chunks per step,
    one product each, the weights held as as many tiles (the launcher takes 4 where one load does
    not fit: float32 at H = 1024, B ≤ 16; bfloat16 at H = 1024, B = 64; TF32 at H = 512,
    B = 64; 2 and 8 only when asked for, 8 not yet measured on a GPU). TMA, FENCE: as in
    :func:`resident_forward_kernel`, the ring holding the step's gradients (block g: gate g).
    SPLIT = 2 as there (not yet timed): each program of a pair reads half of the step's gradients
    (the other half of K), which is what would put float32 at H = 1024, B = 64 on chip (a
    256-column product, 8 chunks: the whole K would need 512 columns or two batch groups, more
    programs than multiprocessors); the two add their ∂h parts (:func:`_pair_sum`).

    F16 (``TUNING["f16"]`` without TMA, float32 layers; not yet timed): the product in float16,
    as the forward's, with W the weights × 2^a and a scale per step and batch row for the
    gradients, which have no bound known beforehand: before the barrier each program gathers
    its slice's largest |value| of each row into DMAX (an atomic max), after it each reads the
    rows' maxima and scales column n of the operand by :func:`_row_scales` (its largest into
    [2^13, 2^14)) on the way to float16; the product's columns are scaled back in float32. The
    operand stays float32 in memory (the weight gradients' GEMMs read it), half of it in shared
    memory, with half the weights: what puts float32 at H = 1024, B = 64 on chip, as bfloat16.
    F16 = 2 (``TUNING["f16"] = 2``; not yet timed): the product reads the gradients in float16,
    not float32, so half the bytes (every program reads the whole step's gradients of its batch
    rows: at H = 1024, B = 64 the chip reads 64 MB from L2 a step in float32), at the cost of a
    second barrier a step: after the one that gathers the maxima each program scales its slice by
    its rows' scales, stores it in float16 (into RING_PTR, one slot: every program has finished
    the last step's product before anyone passes this step's first barrier; or with TMA into the
    ring, which F16 = 1 cannot use), and the product waits for the second."""
    NP_H = tl.num_programs(0)
    NG: tl.constexpr = 4 if LSTM else 3
    KS: tl.constexpr = KP // SPLIT  # the program's part of K, from K0
    K0 = _k_half(SPLIT) * KS
    u, u_mask, rows, row_mask, m2, own = _tile_t(B, H, BH, BB, SPLIT)
    mine = _own_rows(m2, rows, SPLIT)
    p_i, p_f, p_o = _unit_vectors(PP, u, u_mask, H, BH, PEEP, True)
    own_x = rows[None, :] * (NG * H) + u[:, None]
    own_g = rows[None, :] * (4 * H) + u[:, None]
    # the second operand: column (f, g, b) of row k is D_t[b, g·H + K0 + f·KS / FOLD + k]. Its
    # 2-D offsets are formed inside the time loop from the step's column offsets (a tensor made
    # before it would be hoisted and held in registers all along)
    col = tl.arange(0, FOLD * 4 * BB)
    col_gate = (col // BB) % 4
    col_k0 = K0 + (col // (4 * BB)) * (KS // FOLD)
    col_row = tl.program_id(1) * BB + col % BB
    d_cols = col_row * (NG * H) + col_gate * H + col_k0
    d_ok = (col_gate < NG) & (col_row < B)
    # the TMA ring: a slot per step parity, this batch tile's SPLIT·FOLD·4 blocks in each, the
    # program reading its FOLD·4 from K0's
    slot_blocks = tl.num_programs(1) * (SPLIT * FOLD * 4)
    tile_r0 = tl.program_id(1) * (SPLIT * FOLD * 4)
    read_r0 = _k_half(SPLIT) * (FOLD * 4)
    BT = tl.minimum(B, BB)
    # the weight columns, one tile per chunk (rounded to TF32 by the caller if ROUND)
    w0, w1, w2, w3, w4, w5, w6, w7 = _weight_tiles(
        W, H, BH, K0, KS, NG, FOLD, SPLIT, CHUNKS, True, DOT_DTYPE
    )
    cnt = CNT + tl.program_id(1)
    pair_cnt = _pair_counter(CNT, SPLIT)
    pair_target = 0
    if F16:
        w_unscale = tl.load(SCALE)
    dh = tl.load(DH + own, mask=m2, other=0.0)
    t = T - 1
    dy = tl.load(DY + t * B * H + own, mask=m2, other=0.0).to(tl.float32)
    g0, g1, g2, g3 = _load_gates(G + t * B * 4 * H + own_g, H, m2, 4)
    if LSTM:
        dc = tl.load(DC + own, mask=m2, other=0.0)
        c = tl.load(CS + (t + 1) * B * H + own, mask=m2, other=0.0)
        prev = tl.load(CS + t * B * H + own, mask=m2, other=0.0)
    else:
        dc = dh
        c = dh
        prev = tl.load(HS + t * B * H + own, mask=m2, other=0.0)
    target = 0
    while t >= 0:
        live = _live(LENS, rows, row_mask, t, HAS_LENS)[None, :]
        dh = dh + tl.where(live, dy, 0.0)
        dx = DX + t * B * NG * H + own_x
        if LSTM:
            i, f, gg, o = g0, g1, g2, g3
            tc = _tanh(c)
            d3 = tl.where(live, dh * tc * o * (1.0 - o), 0.0)
            dc = dc + tl.where(live, dh * o * (1.0 - tc * tc), 0.0)
            if PEEP:  # o saw the new cell
                dc = dc + d3 * p_o
            d0 = tl.where(live, dc * gg * i * (1.0 - i), 0.0)
            d1 = tl.where(live, dc * prev * f * (1.0 - f), 0.0)
            d2 = tl.where(live, dc * i * (1.0 - gg * gg), 0.0)
            ty = DX.dtype.element_ty
            _store_gates(dx, H, mine, 4, d0.to(ty), d1.to(ty), d2.to(ty), d3.to(ty))
            dc = tl.where(live, dc * f, dc)
            if PEEP:  # i and f saw the previous cell (d0, d1: zero where not live)
                dc = dc + d0 * p_i + d1 * p_f
            carry = tl.where(live, 0.0, dh)
            c = prev
        else:
            r, z, n, hn = g0, g1, g2, g3
            dan = tl.where(live, dh * (1.0 - z) * (1.0 - n * n), 0.0)
            daz = tl.where(live, dh * (prev - n) * z * (1.0 - z), 0.0)
            dar = dan * hn * r * (1.0 - r)
            ty = DX.dtype.element_ty
            _store_gates(dx, H, mine, 3, dar.to(ty), daz.to(ty), dan.to(ty), None)
            # the recurrent side's gradients (the product's operand)
            d0, d1, d2 = dar, daz, dan * r
            d3 = d2  # no fourth gate: never stored
            ty = DR.dtype.element_ty
            _store_gates(
                DR + t * B * 3 * H + own_x, H, mine, 3, d0.to(ty), d1.to(ty), d2.to(ty), None
            )
            carry = tl.where(live, dh * z, dh)
        if F16:  # the rows' largest |value| of the step's operand, gathered across programs
            big = tl.maximum(tl.abs(d0), tl.abs(d1))
            big = tl.maximum(big, tl.abs(d2))
            if LSTM:
                big = tl.maximum(big, tl.abs(d3))
            big = tl.max(tl.where(m2, big, 0.0), axis=0)
            tl.atomic_max(DMAX + t * B + rows, big, mask=row_mask)
        r0 = (t % 2) * slot_blocks + tile_r0
        KR: tl.constexpr = SPLIT * FOLD  # the TMA ring's K ranges
        if TMA and F16 != 2:
            _ring_store_gates(
                RING_PTR, r0, BT, u, mine, d0, d1, d2, d3, t, BB, KP, KR, ROUND, FENCE, LSTM
            )
        # the previous step's pointwise inputs do not depend on the others: load them now
        prv = m2 & (t > 0)
        dy = tl.load(DY + (t - 1) * B * H + own, mask=prv, other=0.0).to(tl.float32)
        g0, g1, g2, g3 = _load_gates(G + (t - 1) * B * 4 * H + own_g, H, prv, 4)
        if LSTM:
            prev = tl.load(CS + (t - 1) * B * H + own, mask=prv, other=0.0)
        else:
            prev = tl.load(HS + (t - 1) * B * H + own, mask=prv, other=0.0)
        target += NP_H
        _sync(cnt, ERR, target, SPIN_LIMIT)
        if F16 == 2:  # the slice in float16, by its rows' scales; then everyone's, after a barrier
            big = tl.load(DMAX + t * B + rows, mask=row_mask, other=0.0, cache_modifier=".cg")
            own_scale = _row_scales(big)[0][None, :]
            q0, q1, q2, q3 = d0 * own_scale, d1 * own_scale, d2 * own_scale, d3 * own_scale
            if TMA:
                _ring_store_gates(
                    RING_PTR, r0, BT, u, mine, q0, q1, q2, q3, t, BB, KP, KR, False, FENCE, LSTM
                )
            else:
                ty = RING_PTR.dtype.element_ty
                _store_gates(
                    RING_PTR + own_x, H, mine, NG, q0.to(ty), q1.to(ty), q2.to(ty), q3.to(ty)
                )
            target += NP_H
            _sync(cnt, ERR, target, SPIN_LIMIT)
        if TMA:
            _async_proxy_fence(t, FENCE)
        col_scale = d_ok
        if F16:
            big = tl.load(DMAX + t * B + col_row, mask=col_row < B, other=0.0, cache_modifier=".cg")
            col_scale, col_unscale = _row_scales(big)
        if F16 == 2:  # already scaled, in float16
            src, src_step = RING_PTR, d_cols
        else:
            src, src_step = DR, t * B * NG * H + d_cols
        product = _chunked_product(
            w0, w1, w2, w3, w4, w5, w6, w7, src, src_step, d_ok, col_k0,
            RING, r0 + read_r0, col_scale, H, KS, FOLD, CHUNKS, SEPARATE, DOT_DTYPE, PREC, ROUND,
            TMA, F16 == 1,
        )  # fmt: skip
        if F16:
            product = product * (col_unscale * w_unscale)[None, :]
        if FOLD == 2:
            product = _fold_diagonal(product, 4 * BH, 4 * BB)
        part = _gate_diagonal(product, BH, BB)
        if SPLIT == 2:
            pair_target += 2
            part = _pair_sum(part, XCH, pair_cnt, ERR, pair_target, SPIN_LIMIT)
        dh = carry + part
        t -= 1
    tl.store(DH + own, dh, mask=mine)
    if LSTM:
        tl.store(DC + own, dc, mask=mine)


@triton.jit
def f16_operands_kernel(
    W, W16, WMAX, H0, HQ, HMAX, SCALE, NW, NH, BLOCK: tl.constexpr, HAS_H: tl.constexpr
):  # fmt: skip
    """The float16 products' operands (``F16``) in one launch, from the largest magnitudes
    WMAX of the NW float32 weights W and HMAX of the NH float32 initial-state values H0 (0-d,
    on the device): W16 = W × 2^a, a = 15 − e(max(WMAX, 2^−60)) (the largest in [2^14, 2^15));
    with HAS_H, HQ = H0 × 2^b, b = 14 − e(max(HMAX, 1)), and SCALE = (2^b, 2^−(a+b)), else
    SCALE = (2^−a,). Each program converts BLOCK of each; the first writes SCALE."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    a = 15 - _exponent(tl.maximum(tl.load(WMAX), 2.0**-60))
    w = tl.load(W + offsets, mask=offsets < NW, other=0.0)
    tl.store(W16 + offsets, (w * _pow2(a)).to(tl.float16), mask=offsets < NW)
    first = tl.program_id(0) == 0
    if HAS_H:
        b = 14 - _exponent(tl.maximum(tl.load(HMAX), 1.0))
        h = tl.load(H0 + offsets, mask=offsets < NH, other=0.0)
        tl.store(HQ + offsets, (h * _pow2(b)).to(tl.float16), mask=offsets < NH)
        if first:
            tl.store(SCALE, _pow2(b))
            tl.store(SCALE + 1, _pow2(-(a + b)))
    elif first:
        tl.store(SCALE, _pow2(-a))
