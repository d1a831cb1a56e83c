"""Attention launchers on the CUDA backend (``csrc/cuda/attention.cu``); the contract is in
:mod:`pyinterp.ops.attention.function`. Forward only. Launch geometry:
stats - one block per (batch x head, BM queries), one thread per query, BM = BN chosen so the
staged query rows and key tile fit 48 KiB of shared memory (beyond that, for large head dims, the
device's opt-in limit); pattern - one thread per output. Blocks are numbered on grid x only (grid
y would cap B * H at 65,535).
"""
from __future__ import annotations

import numpy as np
import torch

from pyinterp.backends._shared import pattern_output, stats_operands
from pyinterp.backends.cuda import runtime as rt

_FILE = "attention.cu"


def _tile(D: int, acc_bytes: int, fn) -> int:
    """Queries per block (= keys per tile): the largest that fits 48 KiB (several blocks per
    SM), else the opt-in limit (one thread per query: few, large blocks for large D)."""
    most = rt.max_dynamic_smem(fn)
    for limit in (rt.SMEM_DEFAULT - fn.shared_size_bytes, most):
        for bm in (128, 64, 32):
            if 2 * bm * (D + 1) * acc_bytes <= limit:
                return bm
    raise ValueError(f"d_head = {D} is too large for the cuda attention kernel "
                     f"(max ~{most // (64 * acc_bytes) - 1})")


def attention_stats(q, k, tokens, kinds, ns, causal, kpm, scale, q_offset):
    q, k, tok, pad, kinds_t, ns_t, (lse, ent, mass) = stats_operands(q, k, tokens, kinds, ns, kpm)
    (B, H, Tq, D), Hkv, Tk = q.shape, k.shape[1], k.shape[2]
    if lse.numel() == 0:
        return lse, ent, mass
    acc_bytes = lse.element_size()
    fn = rt.kernel(_FILE, "attention_stats", q.dtype)
    bm = _tile(D, acc_bytes, fn)
    grid = (((Tq + bm - 1) // bm) * B * H, 1, 1)
    rt.launch(fn, grid, (bm, 1, 1), (
        rt.ptr(q), rt.ptr(k), rt.ptr(tok), rt.ptr(pad), rt.ptr(kinds_t), rt.ptr(ns_t),
        rt.i32(len(kinds)), rt.ptr(lse), rt.ptr(ent), rt.ptr(mass), rt.i32(H), rt.i32(H // Hkv),
        rt.i32(Tq), rt.i32(Tk), rt.i32(D), rt.i32(q_offset), rt.i32(int(causal)),
        np.float64(scale), rt.i32(bm),
    ), shared_mem=2 * bm * (D + 1) * acc_bytes)
    return lse, ent, mass


def attention_pattern(q, k, lse, causal, kpm, scale, q_offset):
    q, k, lse, pad, out = pattern_output(q, k, lse, kpm)
    if out.numel() == 0:
        return out
    (B, H, Tq, D), Hkv, Tk, ad = q.shape, k.shape[1], k.shape[2], out.dtype
    threads = 128
    fn = rt.kernel(_FILE, "attention_pattern", q.dtype)
    grid = (B * H * Tq * ((Tk + threads - 1) // threads), 1, 1)
    rt.launch(fn, grid, (threads, 1, 1), (
        rt.ptr(q), rt.ptr(k), rt.ptr(pad), rt.ptr(lse), rt.ptr(out), rt.i32(H), rt.i32(H // Hkv),
        rt.i32(Tq), rt.i32(Tk), rt.i32(D), rt.i32(q_offset), rt.i32(int(causal)), np.float64(scale),
    ), shared_mem=D * (8 if ad == torch.float64 else 4))
    return out
