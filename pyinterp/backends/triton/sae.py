"""Sparse SAE launchers on the Triton backend (kernels: ``triton_kernels/sae.py``); the
contract is in :mod:`pyinterp.ops.sae.function`. Top-k up to MAX_FUSED_K (not float64) is fused
into the GEMM epilogue; larger k, float64 and the threshold / BatchTopK encoders select with torch
over row chunks (:mod:`pyinterp.backends.sae_select`).
"""
from __future__ import annotations

import torch
import triton

from pyinterp._common import triton_interpreted as _interpreted
from pyinterp.backends import sae_layout
from pyinterp.backends import sae_select as S
from pyinterp.backends.sae_select import batchtopk, threshold  # noqa: F401  (launchers)
from pyinterp.backends.triton.kernels import package  # noqa: F401  (registers the kernels)
from pyinterp.triton_kernels import sae as tk

MAX_FUSED_K = 256
_MIN_KEY = -(2 ** 63)


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def topk_tiles(KP: int, dtype: torch.dtype) -> dict:
    """Tiles, warps and pipeline depth of ``_topk_partial_kernel`` for a running top-KP.

    Each program holds a (BLOCK_M, BLOCK_N) accumulator, the tile's keys and the running
    (BLOCK_M, KP) top keys (int64) in registers; BLOCK_M shrinks as KP grows so that they fit
    255 registers per thread, with 8 warps. 16-bit inputs take BLOCK_M = 64 up to KP = 64
    (wgmma needs 64 rows) and BLOCK_N = max(KP, 64) (128 spilled under triton 3.6); float32
    (exact "ieee" FMA dots, no tensor cores) half the rows and BLOCK_N = max(KP, 128). Chosen
    from ptxas on sm_90 under triton 3.6 and 3.9 (docs/gpu-resources.md): the former fp32
    KP = 256 tiles (64 x 256, 3 stages) needed 262,144 B of shared memory (> 232,448) and
    spilled 14 KB per thread; these need <= 64 KiB and spill at most a few dozen bytes."""
    if _interpreted():
        return dict(BLOCK_M=16, BLOCK_N=max(KP, 32), BLOCK_K=32, num_warps=4, num_stages=1)
    wide = dtype == torch.float32
    block_m = (32 if wide else 64) if KP <= 64 else 32 if (KP <= 128 and not wide) else 16
    return dict(BLOCK_M=block_m, BLOCK_N=max(KP, 128 if wide else 64), BLOCK_K=32, num_warps=8,
                num_stages=2 if wide else 3)


def _topk_fused(x, W_enc, b_enc, b_dec, k):
    n, d_in = x.shape
    d_sae = W_enc.shape[1]
    dev = x.device
    bias = S.fold_bias(b_enc, b_dec, W_enc).contiguous()  # (x - b_dec) @ W + b = x @ W + bias
    KP = _next_pow2(k)
    interp = _interpreted()
    tiles = topk_tiles(KP, x.dtype)
    BLOCK_M, BLOCK_N = tiles["BLOCK_M"], tiles["BLOCK_N"]
    m_blocks = max(1, triton.cdiv(n, BLOCK_M))  # N = 0: no launch, but no division by zero
    n_tiles = triton.cdiv(d_sae, BLOCK_N)
    sms = 1 if interp else torch.cuda.get_device_properties(dev).multi_processor_count
    n_splits = max(1, min(n_tiles, triton.cdiv(2 * sms, m_blocks)))
    cols_per_split = triton.cdiv(n_tiles, n_splits) * BLOCK_N
    n_splits = triton.cdiv(d_sae, cols_per_split)
    cand = torch.empty(n, n_splits, KP, dtype=torch.int64, device=dev)
    if n:
        tk._topk_partial_kernel[(m_blocks, n_splits)](
            x, W_enc, bias, cand, n, d_in, d_sae, cols_per_split, n_splits,
            x.stride(0), W_enc.stride(0), W_enc.stride(1), _MIN_KEY, KP=KP, **tiles,
            CAST_F32=interp and x.dtype != torch.float32, IEEE=x.dtype == torch.float32)
    G = max(2, 2048 // KP) if not interp else 4
    while cand.shape[1] > 1 and n:
        n_in = cand.shape[1]
        n_out = triton.cdiv(n_in, G)
        nxt = torch.empty(n, n_out, KP, dtype=torch.int64, device=dev)
        tk._topk_merge_kernel[(n, n_out)](cand, nxt, n_in, n_out, _MIN_KEY, KP=KP, G=G)
        cand = nxt
    values = torch.empty(n, k, dtype=x.dtype, device=dev)
    indices = torch.empty(n, k, dtype=torch.int64, device=dev)
    if n:
        FM = 16
        tk._topk_finalize_kernel[(triton.cdiv(n, FM),)](cand, values, indices, n, k, KP=KP, BLOCK_M=FM)
    return values, indices, values > 0


def _blocks(d):
    return (32 if _interpreted() else 128), min(triton.next_power_of_2(max(d, 1)), 64 if _interpreted() else 256)


def gather(coef, idx, W, stride_l, stride_d, d, bias, out_dtype):
    """out[n] = bias + sum_j coef[n, j] * W[idx[n, j], :] (W addressed by strides)."""
    n, k = idx.shape
    out = torch.empty(n, d, dtype=out_dtype, device=coef.device)
    if n:
        W, stride_l, stride_d = sae_layout.row_major(W, stride_l, stride_d, n * k)
        BJ, BD = 16, _blocks(d)[1]
        tk._gather_kernel[(n, triton.cdiv(d, BD))](
            coef, idx, W, bias if bias is not None else coef, out, k, d, stride_l, stride_d,
            HAS_BIAS=bias is not None, ACC_F64=coef.dtype == torch.float64, BLOCK_J=BJ, BLOCK_D=BD)
    return out


def gather_dot(g, idx, W, stride_l, stride_d):
    """out[n, j] = dot(g[n], W[idx[n, j], :]); g (N, d) in the compute dtype."""
    n, k = idx.shape
    d = g.shape[1]
    out = torch.empty(n, k, dtype=g.dtype, device=g.device)
    if n:
        BJ, BD = 16, _blocks(d)[1]
        tk._gather_dot_kernel[(n, triton.cdiv(k, BJ))](g, idx, W, out, k, d, stride_l, stride_d,
                                                    ACC_F64=g.dtype == torch.float64,
                                                    BLOCK_J=BJ, BLOCK_D=BD)
    return out


def deterministic_wanted(flag: bool) -> bool:
    return bool(flag) or torch.are_deterministic_algorithms_enabled()


def segments(idx, d_sae):
    """Entries grouped by latent: (order, offsets), stable (entries keep their order)."""
    flat = idx.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    offsets = torch.zeros(d_sae + 1, dtype=torch.int64, device=idx.device)
    offsets[1:] = torch.cumsum(torch.bincount(flat, minlength=d_sae), 0)
    return order, offsets


def scatter_rows(coef, idx, X, d_sae, out_dtype, transposed, want_colsum, deterministic):
    """out[l] = sum over entries e with idx e == l of coef[e] * X[row(e)]: (d_sae, d), or its
    transpose (d, d_sae). coef (N, k), X (N, d) in the compute dtype. Also the per-latent sum
    of coef when ``want_colsum``. Rows are written row-major (coalesced) and transposed after
    (sae_layout)."""
    n, k = idx.shape
    d = X.shape[1]
    dev = X.device
    cd = coef.dtype
    BD = _blocks(d)[1]
    if deterministic_wanted(deterministic):
        rows = torch.empty(d_sae, d, dtype=out_dtype, device=dev)
        colsum = torch.empty(d_sae, dtype=cd, device=dev) if want_colsum else None
        order, offsets = segments(idx, d_sae)
        tk._scatter_segment_kernel[(d_sae, triton.cdiv(d, BD))](
            coef, order, offsets, X, rows, colsum if want_colsum else coef, k, d, d, 1,
            HAS_COLSUM=want_colsum, ACC_F64=cd == torch.float64, BLOCK_D=BD)
    else:
        rows = torch.zeros(d_sae, d, dtype=cd, device=dev)
        colsum = torch.zeros(d_sae, dtype=cd, device=dev) if want_colsum else None
        if n:
            tk._scatter_atomic_kernel[(n, triton.cdiv(d, BD))](
                coef, idx, X, rows, colsum if want_colsum else coef, k, d, d, 1,
                HAS_COLSUM=want_colsum, BLOCK_D=BD)
    if transposed:
        return sae_layout.transposed(rows, out_dtype), colsum
    return rows.to(out_dtype), colsum


def topk(x, W_enc, b_enc, b_dec, k):
    if k <= MAX_FUSED_K and x.dtype != torch.float64:
        return _topk_fused(x, W_enc, b_enc, b_dec, k)
    return S.topk(x, W_enc, b_enc, b_dec, k)
