"""Attention launchers on the Triton backend (kernels: ``triton_kernels/attention.py``); the
contract is in :mod:`pyinterp.ops.attention.function`. Forward only. Under TRITON_INTERPRET=1
the operands of tl.dot are cast to float32 (the interpreter's bf16 dot is wrong).

Tiles (sm_90, docs/gpu-resources.md): bf16/fp16 and TF32 scores take 64-row tiles, which wgmma
needs; exact float32 and float64 scores (FMA dots) take 32 x 32 tiles over 8 warps, which keep
their accumulators and operands in registers (64 x 64 over 4 warps spilled ~7 KB per thread at
d_head 128, 32 x 32 over 4 warps up to 11 KB at d_head 256 under triton 3.6).
Float32 scores use TF32 tensor cores only when the caller allows it the way torch's matmuls
do (``torch.backends.cuda.matmul.allow_tf32`` / ``torch.set_float32_matmul_precision``).
"""
from __future__ import annotations

import torch
import triton

from pyinterp._common import RULE_KINDS, triton_interpreted
from pyinterp.backends._shared import pattern_output, stats_operands
from pyinterp.backends.triton.kernels import package  # noqa: F401  (registers the kernels)
from pyinterp.triton_kernels import attention as tk


def _precision(dtype: torch.dtype) -> str:
    """ "tf32" when float32 scores may use TF32 tensor cores (the caller allowed it for torch's
    float32 matmuls), else "ieee" (exact float32; irrelevant for 16-bit inputs)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def _blocks(D: int, dtype: torch.dtype, precision: str):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps)."""
    block_d = max(16, triton.next_power_of_2(D))
    if triton_interpreted():
        return 32, 32, block_d, 4
    tensor_cores = dtype in (torch.float16, torch.bfloat16) or precision == "tf32"
    if not tensor_cores:
        return 32, 32, block_d, 8
    return 64, 64, block_d, (4 if block_d <= 128 else 8)  # 8 warps: no spills at d_head 256


def _cast_f32(dtype: torch.dtype) -> bool:
    # The interpreter's bf16/fp16 tl.dot is unreliable; on a GPU the tensor cores take them as is.
    return triton_interpreted() and dtype in (torch.float16, torch.bfloat16)


def attention_stats(q, k, tokens, kinds, ns, causal, kpm, scale, q_offset):
    q, k, tok, pad, kinds_t, ns_t, (lse, ent, mass) = stats_operands(q, k, tokens, kinds, ns, kpm)
    (B, H, Tq, D), Hkv, Tk = q.shape, k.shape[1], k.shape[2]
    if lse.numel() == 0:
        return lse, ent, mass
    precision = _precision(q.dtype)
    bm, bn, bd, warps = _blocks(D, q.dtype, precision)
    grid = (triton.cdiv(Tq, bm) * B * H,)  # (batch x head, query block) on axis 0
    tk._stats_kernel[grid](  # an unused tokens / padding argument still needs a valid pointer
        q, k, kinds_t if tok is None else tok, kinds_t if pad is None else pad, kinds_t, ns_t,
        lse, ent, mass, H, H // Hkv, Tq, Tk, D, int(q_offset), float(scale), B * H * Tq,
        R=len(kinds), CAUSAL=bool(causal), HAS_PAD=pad is not None,
        HAS_DUP=RULE_KINDS["duplicate"] in kinds, HAS_IND=RULE_KINDS["induction"] in kinds,
        CAST_F32=_cast_f32(q.dtype), ACC_F64=lse.dtype == torch.float64, BLOCK_M=bm, BLOCK_N=bn,
        BLOCK_D=bd, PRECISION=precision, num_warps=warps,
    )
    return lse, ent, mass


def attention_pattern(q, k, lse, causal, kpm, scale, q_offset):
    q, k, lse, pad, out = pattern_output(q, k, lse, kpm)
    if out.numel() == 0:
        return out
    (B, H, Tq, D), Hkv, Tk, ad = q.shape, k.shape[1], k.shape[2], out.dtype
    pad = lse if pad is None else pad  # a valid pointer for the unused argument
    precision = _precision(q.dtype)
    bm, bn, bd, warps = _blocks(D, q.dtype, precision)
    grid = (triton.cdiv(Tq, bm) * B * H, triton.cdiv(Tk, bn))
    tk._pattern_kernel[grid](
        q, k, pad, lse, out, H, H // Hkv, Tq, Tk, D, int(q_offset), float(scale),
        CAUSAL=bool(causal), HAS_PAD=kpm is not None, CAST_F32=_cast_f32(q.dtype),
        ACC_F64=ad == torch.float64, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PRECISION=precision,
        num_warps=warps,
    )
    return out
