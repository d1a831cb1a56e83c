"""Attention statistics and patterns on the C++ CPU backend (``csrc/cpu/attention.cpp``).

Same interface as :mod:`pyinterp.reference.attention`. Forward only (the ops run under
no_grad): see docs/decisions/attention-stats-no-grad.md.
"""
from __future__ import annotations

import torch

from pyinterp.backends.cpu import dtype_code, ext, num_threads

# Must match RuleKind in csrc/cpu/attention.cpp (and the Triton / CUDA kernels).
RULE_KINDS = {"offset": 0, "pos": 1, "duplicate": 2, "induction": 3}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pad_ptr(kpm):
    return 0 if kpm is None else kpm.contiguous().data_ptr()


def _prep(q, k, kpm):
    q = q.contiguous()
    k = k.contiguous()
    kpm = None if kpm is None else kpm.contiguous()
    return q, k, kpm


def attention_stats(q, k, tokens, rules, causal, kpm, scale, q_offset):
    q, k, kpm = _prep(q, k, kpm)
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    ad = acc_dtype(q.dtype)
    lse = torch.empty(B, H, Tq, dtype=ad)
    ent = torch.empty(B, H, Tq, dtype=ad)
    mass = torch.empty(len(rules), B, H, Tq, dtype=ad)
    tok = None if tokens is None else tokens.to(torch.int64).contiguous()
    if B * H * Tq:
        ext().attention_stats(
            q.data_ptr(), k.data_ptr(), 0 if tok is None else tok.data_ptr(), _pad_ptr(kpm),
            [RULE_KINDS[r.kind] for r in rules], [int(r.n) for r in rules],
            lse.data_ptr(), ent.data_ptr(), mass.data_ptr(),
            B, H, Hkv, Tq, Tk, D, int(q_offset), bool(causal), float(scale), dtype_code(q),
            num_threads())
    return lse, ent, mass


def attention_pattern(q, k, lse, causal, kpm, scale, q_offset):
    q, k, kpm = _prep(q, k, kpm)
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    lse = lse.to(acc_dtype(q.dtype)).contiguous()
    out = torch.empty(B, H, Tq, Tk, dtype=acc_dtype(q.dtype))
    if out.numel():
        ext().attention_pattern(
            q.data_ptr(), k.data_ptr(), _pad_ptr(kpm), lse.data_ptr(), out.data_ptr(),
            B, H, Hkv, Tq, Tk, D, int(q_offset), bool(causal), float(scale), dtype_code(q),
            num_threads())
    return out
