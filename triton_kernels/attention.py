"""Attention statistics and pattern kernels in Triton (launchers:
``pyinterp/backends/triton/attention.py``).

``_stats_kernel`` is a FlashAttention-2-style forward without the value product: one program
per (batch x head, block of BLOCK_M queries), numbered on grid axis 0 only (axis 1 would cap
B * H at 65,535), walks the key blocks with ``tl.dot`` and an online
softmax, and in the same loop accumulates what the statistics need (running max m, l = sum e^{s-m},
a = sum e^{s-m} (s - m) for the entropy, and the token-rule masses, with the tokens of each key
block loaded next to it). Single-key rules (offset, first) are one gathered dot product per query
in the epilogue. ``_pattern_kernel`` writes exp(s - lse) tile by tile for chosen rows.

The score dots run on tensor cores for bf16/fp16 (wgmma on sm_90); float32 scores are exact
(``PRECISION="ieee"``) unless the caller allowed TF32 (``PRECISION="tf32"``).

Forward only (docs/decisions/attention-stats-no-grad.md). Under TRITON_INTERPRET=1 the operands
of tl.dot are cast to float32 (the interpreter's bf16 dot is wrong).
"""
import triton
import triton.language as tl

# Rule kinds (pyinterp._common.RULE_KINDS): 0 offset (key = query - n), 1 pos (key = n),
# 2 duplicate, 3 induction.


@triton.jit
def _query_block(Q, bh, pid_m, Tq, D, q_offset, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                 CAST_F32: tl.constexpr):
    """Query block pid_m of head bh: row offsets, positions (with q_offset) and mask, feature
    offsets and mask, and the queries (BLOCK_M, BLOCK_D)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Tq
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + (bh * Tq + offs_m[:, None]) * D + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if CAST_F32:
        q = q.to(tl.float32)
    return offs_m, q_offset + offs_m, row_ok, offs_d, d_ok, q


@triton.jit
def _scores(q, k_head, offs_n, n_ok, offs_d, d_ok, D, scale, CAST_F32: tl.constexpr,
            ACC_F64: tl.constexpr, PRECISION: tl.constexpr):
    """Scaled scores (BLOCK_M, BLOCK_N) of the query block q against keys offs_n of k_head."""
    kt = tl.load(k_head + offs_n[None, :] * D + offs_d[:, None],
                 mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    if CAST_F32:
        kt = kt.to(tl.float32)
    acc_t = tl.float64 if ACC_F64 else tl.float32
    return tl.dot(q, kt, out_dtype=acc_t, input_precision=PRECISION) * scale


@triton.jit
def _attended(valid, offs_n, n_ok, pos_m, PAD, b, Tk, CAUSAL: tl.constexpr,
              HAS_PAD: tl.constexpr):
    """valid narrowed to the keys each query may attend: not after it (causal), not padding."""
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= pos_m[:, None])
    if HAS_PAD:
        pad = tl.load(PAD + b * Tk + offs_n, mask=n_ok, other=1)
        valid = valid & (pad == 0)[None, :]
    return valid


@triton.jit
def _stats_kernel(
    Q, K, TOK, PAD, KINDS, NS, LSE, ENT, MASS,
    H, GROUP, Tq, Tk, D, q_offset, scale, PLANE,
    R: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
    HAS_DUP: tl.constexpr, HAS_IND: tl.constexpr, CAST_F32: tl.constexpr,
    ACC_F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr = "ieee",
):
    acc_t = tl.float64 if ACC_F64 else tl.float32
    n_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    bh = (pid // n_m).to(tl.int64)
    pid_m = pid % n_m
    b = bh // H
    h = bh % H
    hkv = h // GROUP
    HKV = H // GROUP
    offs_m, pos_m, row_ok, offs_d, d_ok, q = _query_block(Q, bh, pid_m, Tq, D, q_offset, BLOCK_M,
                                                          BLOCK_D, CAST_F32)
    k_base = K + (b * HKV + hkv) * Tk * D
    neg_inf = float("-inf")
    m_i = tl.full([BLOCK_M], neg_inf, dtype=acc_t)
    l_i = tl.zeros([BLOCK_M], dtype=acc_t)
    a_i = tl.zeros([BLOCK_M], dtype=acc_t)
    dup_i = tl.zeros([BLOCK_M], dtype=acc_t)
    ind_i = tl.zeros([BLOCK_M], dtype=acc_t)
    # A NaN (bad 2) or +inf (bad 1) attended score: lse NaN / +inf, the rest NaN, as the
    # reference (docs/decisions/nan-semantics.md); such scores leave the online softmax.
    bad_i = tl.zeros([BLOCK_M], dtype=tl.int32)
    if HAS_DUP or HAS_IND:
        tok_i = tl.load(TOK + b * Tk + pos_m, mask=row_ok, other=0)
    if CAUSAL:
        hi = tl.minimum(Tk, q_offset + (pid_m + 1) * BLOCK_M)
    else:
        hi = Tk
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Tk
        s = _scores(q, k_base, offs_n, n_ok, offs_d, d_ok, D, scale, CAST_F32, ACC_F64, PRECISION)
        valid = _attended(n_ok[None, :] & row_ok[:, None], offs_n, n_ok, pos_m, PAD, b, Tk,
                          CAUSAL, HAS_PAD)
        bad_i = tl.maximum(bad_i, tl.max(tl.where(valid & (s != s), 2,
                                                  tl.where(valid & (s == -neg_inf), 1, 0)), 1))
        valid = valid & (s == s) & (s != -neg_inf) & (s != neg_inf)
        s = tl.where(valid, s, neg_inf)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == neg_inf, 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        delta = tl.where(l_i > 0, m_i - m_safe, 0.0)
        x = tl.where(valid, s - m_safe[:, None], 0.0)  # finite everywhere: no inf * 0
        p = tl.where(valid, tl.exp(x), 0.0)
        a_i = alpha * (a_i + delta * l_i) + tl.sum(p * x, 1)
        l_i = alpha * l_i + tl.sum(p, 1)
        if HAS_DUP:
            tok_j = tl.load(TOK + b * Tk + offs_n, mask=n_ok, other=0)
            dmask = (tok_j[None, :] == tok_i[:, None]) & (offs_n[None, :] < pos_m[:, None])
            dup_i = alpha * dup_i + tl.sum(tl.where(dmask, p, 0.0), 1)
        if HAS_IND:
            prev_ok = n_ok & (offs_n >= 1)
            tok_p = tl.load(TOK + b * Tk + offs_n - 1, mask=prev_ok, other=0)
            imask = prev_ok[None, :] & (tok_p[None, :] == tok_i[:, None]) & (offs_n[None, :] <= pos_m[:, None])
            ind_i = alpha * ind_i + tl.sum(tl.where(imask, p, 0.0), 1)
        m_i = m_new

    any_key = l_i > 0
    l_safe = tl.where(any_key, l_i, 1.0)
    L = tl.log(l_safe)
    nan = float("nan")
    lse = tl.where(any_key, m_i + L, neg_inf)
    lse = tl.where(bad_i == 2, nan, tl.where(bad_i == 1, -neg_inf, lse))
    ent = tl.where(bad_i > 0, nan, tl.where(any_key, L - a_i / l_safe, 0.0))
    out = bh * Tq + offs_m
    tl.store(LSE + out, lse, mask=row_ok)
    tl.store(ENT + out, ent, mask=row_ok)
    qf = q.to(acc_t)
    # One (B, H, Tq) plane per rule: advance a pointer plane by plane, so that no offset
    # r * PLANE is formed in 32 bits (it passes 2^31 once R * B * H * Tq does).
    mass_ptr = MASS + out
    for r in tl.static_range(R):
        kind = tl.load(KINDS + r)
        n = tl.load(NS + r)
        j = tl.where(kind == 0, pos_m - n, n + pos_m * 0)
        jv = (j >= 0) & (j < Tk) & any_key & row_ok
        if CAUSAL:
            jv = jv & (j <= pos_m)
        if HAS_PAD:
            jpad = tl.load(PAD + b * Tk + j, mask=jv, other=1)
            jv = jv & (jpad == 0)
        kj = tl.load(k_base + j[:, None] * D + offs_d[None, :], mask=jv[:, None] & d_ok[None, :],
                     other=0.0).to(acc_t)
        sdot = tl.sum(qf * kj, 1) * scale
        v = tl.where(jv, tl.exp(tl.where(jv, sdot - lse, 0.0)), 0.0)
        if HAS_DUP:
            v = tl.where(kind == 2, dup_i / l_safe, v)
        if HAS_IND:
            v = tl.where(kind == 3, ind_i / l_safe, v)
        v = tl.where(bad_i > 0, nan, v)
        tl.store(mass_ptr, v, mask=row_ok)
        mass_ptr += PLANE


@triton.jit
def _pattern_kernel(
    Q, K, PAD, LSE, OUT,
    H, GROUP, Tq, Tk, D, q_offset, scale,
    CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, CAST_F32: tl.constexpr, ACC_F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr = "ieee",
):
    n_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    bh = (pid // n_m).to(tl.int64)
    pid_m = pid % n_m
    pid_n = tl.program_id(1)
    b = bh // H
    h = bh % H
    HKV = H // GROUP
    offs_m, pos_m, row_ok, offs_d, d_ok, q = _query_block(Q, bh, pid_m, Tq, D, q_offset, BLOCK_M,
                                                          BLOCK_D, CAST_F32)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < Tk
    s = _scores(q, K + (b * HKV + h // GROUP) * Tk * D, offs_n, n_ok, offs_d, d_ok, D, scale,
                CAST_F32, ACC_F64, PRECISION)
    lse = tl.load(LSE + bh * Tq + offs_m, mask=row_ok, other=float("-inf"))
    # keys with score -inf (masked or from non-finite inputs) get 0; NaN propagates
    valid = n_ok[None, :] & row_ok[:, None] & (lse != float("-inf"))[:, None] & (s != float("-inf"))
    valid = _attended(valid, offs_n, n_ok, pos_m, PAD, b, Tk, CAUSAL, HAS_PAD)
    p = tl.where(valid, tl.exp(tl.where(valid, s - lse[:, None], 0.0)), 0.0)
    tl.store(OUT + (bh * Tq + offs_m[:, None]) * Tk + offs_n[None, :], p,
             mask=row_ok[:, None] & n_ok[None, :])
