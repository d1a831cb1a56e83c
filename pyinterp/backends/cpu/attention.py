"""Attention launchers on the C++ CPU backend (``csrc/cpu/attention.cpp``); the contract is
in :mod:`pyinterp.ops.attention.function`. Forward only."""
from __future__ import annotations

import torch

from pyinterp._common import acc_dtype
from pyinterp.backends.cpu import dtype_code, ext, num_threads


def _pad_ptr(kpm):
    return 0 if kpm is None else kpm.contiguous().data_ptr()


def _prep(q, k, kpm):
    q = q.contiguous()
    k = k.contiguous()
    kpm = None if kpm is None else kpm.contiguous()
    return q, k, kpm


def attention_stats(q, k, tokens, kinds, ns, causal, kpm, scale, q_offset):
    q, k, kpm = _prep(q, k, kpm)
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    ad = acc_dtype(q.dtype)
    lse = torch.empty(B, H, Tq, dtype=ad)
    ent = torch.empty(B, H, Tq, dtype=ad)
    mass = torch.empty(len(kinds), B, H, Tq, dtype=ad)
    tok = None if tokens is None else tokens.to(torch.int64).contiguous()
    if B * H * Tq:
        ext().attention_stats(
            q.data_ptr(), k.data_ptr(), 0 if tok is None else tok.data_ptr(), _pad_ptr(kpm),
            list(kinds), list(ns),
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
