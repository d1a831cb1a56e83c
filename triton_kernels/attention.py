"""Attention statistics and patterns in Triton (same interface as pyinterp.reference.attention).

``_stats_kernel`` is a FlashAttention-2-style forward without the value product: one program
per (block of BLOCK_M queries, batch x head) walks the key blocks with ``tl.dot`` and an online
softmax, and in the same loop accumulates what the statistics need (running max m, l = sum e^{s-m},
a = sum e^{s-m} (s - m) for the entropy, and the token-rule masses, with the tokens of each key
block loaded next to it). Single-key rules (offset, first) are one gathered dot product per query
in the epilogue. ``_pattern_kernel`` writes exp(s - lse) tile by tile for chosen rows.

Forward only (docs/decisions/attention-stats-no-grad.md). Under TRITON_INTERPRET=1 the operands
of tl.dot are cast to float32 (the interpreter's bf16 dot is wrong).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

RULE_KINDS = {"offset": 0, "pos": 1, "duplicate": 2, "induction": 3}


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _stats_kernel(
    Q, K, TOK, PAD, KINDS, NS, LSE, ENT, MASS,
    H, GROUP, Tq, Tk, D, q_offset, scale, PLANE,
    R: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
    HAS_DUP: tl.constexpr, HAS_IND: tl.constexpr, CAST_F32: tl.constexpr,
    ACC_F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_t = tl.float64 if ACC_F64 else tl.float32
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    hkv = h // GROUP
    HKV = H // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pos_m = q_offset + offs_m
    row_ok = offs_m < Tq
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + (bh * Tq + offs_m[:, None]) * D + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if CAST_F32:
        q = q.to(tl.float32)
    k_base = K + (b * HKV + hkv) * Tk * D
    neg_inf = float("-inf")
    m_i = tl.full([BLOCK_M], neg_inf, dtype=acc_t)
    l_i = tl.zeros([BLOCK_M], dtype=acc_t)
    a_i = tl.zeros([BLOCK_M], dtype=acc_t)
    dup_i = tl.zeros([BLOCK_M], dtype=acc_t)
    ind_i = tl.zeros([BLOCK_M], dtype=acc_t)
    if HAS_DUP or HAS_IND:
        tok_i = tl.load(TOK + b * Tk + pos_m, mask=row_ok, other=0)
    if CAUSAL:
        hi = tl.minimum(Tk, q_offset + (pid_m + 1) * BLOCK_M)
    else:
        hi = Tk
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Tk
        kt = tl.load(k_base + offs_n[None, :] * D + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        if CAST_F32:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, out_dtype=acc_t, input_precision="ieee") * scale
        valid = n_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= pos_m[:, None])
        if HAS_PAD:
            pad = tl.load(PAD + b * Tk + offs_n, mask=n_ok, other=1)
            valid = valid & (pad == 0)[None, :]
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
    lse = tl.where(any_key, m_i + L, neg_inf)
    ent = tl.where(any_key, L - a_i / l_safe, 0.0)
    out = bh * Tq + offs_m
    tl.store(LSE + out, lse, mask=row_ok)
    tl.store(ENT + out, ent, mask=row_ok)
    qf = q.to(acc_t)
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
        tl.store(MASS + r * PLANE + out, v, mask=row_ok)


@triton.jit
def _pattern_kernel(
    Q, K, PAD, LSE, OUT,
    H, GROUP, Tq, Tk, D, q_offset, scale,
    CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, CAST_F32: tl.constexpr, ACC_F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_t = tl.float64 if ACC_F64 else tl.float32
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    pid_n = tl.program_id(2)
    b = bh // H
    h = bh % H
    HKV = H // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pos_m = q_offset + offs_m
    row_ok = offs_m < Tq
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < Tk
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + (bh * Tq + offs_m[:, None]) * D + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    kt = tl.load(K + (b * HKV + h // GROUP) * Tk * D + offs_n[None, :] * D + offs_d[:, None],
                 mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    if CAST_F32:
        q = q.to(tl.float32)
        kt = kt.to(tl.float32)
    s = tl.dot(q, kt, out_dtype=acc_t, input_precision="ieee") * scale
    lse = tl.load(LSE + bh * Tq + offs_m, mask=row_ok, other=float("-inf"))
    valid = n_ok[None, :] & row_ok[:, None] & (lse > float("-inf"))[:, None]
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= pos_m[:, None])
    if HAS_PAD:
        pad = tl.load(PAD + b * Tk + offs_n, mask=n_ok, other=1)
        valid = valid & (pad == 0)[None, :]
    p = tl.where(valid, tl.exp(tl.where(valid, s - lse[:, None], 0.0)), 0.0)
    tl.store(OUT + (bh * Tq + offs_m[:, None]) * Tk + offs_n[None, :], p,
             mask=row_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------------------
# launchers


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(D: int, dtype: torch.dtype):
    block_d = max(16, triton.next_power_of_2(D))
    if _interpreted():
        return 32, 32, block_d, 4
    if dtype == torch.float64 or block_d > 128:
        return 32, 32, block_d, 4
    return 64, 64, block_d, 4


def _cast_f32(dtype: torch.dtype) -> bool:
    # The interpreter's bf16/fp16 tl.dot is unreliable; on a GPU the tensor cores take them as is.
    return _interpreted() and dtype in (torch.float16, torch.bfloat16)


def attention_stats(q, k, tokens, rules, causal, kpm, scale, q_offset):
    q = q.contiguous()
    k = k.contiguous()
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    ad = acc_dtype(q.dtype)
    dev = q.device
    lse = torch.empty(B, H, Tq, dtype=ad, device=dev)
    ent = torch.empty(B, H, Tq, dtype=ad, device=dev)
    mass = torch.empty(len(rules), B, H, Tq, dtype=ad, device=dev)
    if B * H * Tq == 0:
        return lse, ent, mass
    kinds = torch.tensor([RULE_KINDS[r.kind] for r in rules] or [0], dtype=torch.int32, device=dev)
    ns = torch.tensor([int(r.n) for r in rules] or [0], dtype=torch.int64, device=dev)
    has_dup = any(r.kind == "duplicate" for r in rules)
    has_ind = any(r.kind == "induction" for r in rules)
    tok = tokens.to(torch.int64).contiguous() if (has_dup or has_ind) else kinds
    pad = kpm.contiguous().view(torch.uint8) if kpm is not None else kinds
    bm, bn, bd, warps = _blocks(D, q.dtype)
    grid = (triton.cdiv(Tq, bm), B * H)
    _stats_kernel[grid](
        q, k, tok, pad, kinds, ns, lse, ent, mass,
        H, H // Hkv, Tq, Tk, D, int(q_offset), float(scale), B * H * Tq,
        R=len(rules), CAUSAL=bool(causal), HAS_PAD=kpm is not None,
        HAS_DUP=has_dup, HAS_IND=has_ind, CAST_F32=_cast_f32(q.dtype),
        ACC_F64=ad == torch.float64, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps,
    )
    return lse, ent, mass


def attention_pattern(q, k, lse, causal, kpm, scale, q_offset):
    q = q.contiguous()
    k = k.contiguous()
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    ad = acc_dtype(q.dtype)
    out = torch.empty(B, H, Tq, Tk, dtype=ad, device=q.device)
    if out.numel() == 0:
        return out
    lse = lse.to(ad).contiguous()
    pad = kpm.contiguous().view(torch.uint8) if kpm is not None else lse
    bm, bn, bd, warps = _blocks(D, q.dtype)
    grid = (triton.cdiv(Tq, bm), B * H, triton.cdiv(Tk, bn))
    _pattern_kernel[grid](
        q, k, pad, lse, out, H, H // Hkv, Tq, Tk, D, int(q_offset), float(scale),
        CAUSAL=bool(causal), HAS_PAD=kpm is not None, CAST_F32=_cast_f32(q.dtype),
        ACC_F64=ad == torch.float64, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps,
    )
    return out
