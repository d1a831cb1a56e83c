"""Sparse SAE launchers on the CUDA backend (``csrc/cuda/sae.cu``); the contract is in
:mod:`pyinterp.ops.sae.function`.

topk_encode: torch's cuBLAS GEMM writes float32 pre-activation chunks (at most CHUNK_ELEMS at
a time, never the whole (N, d_sae) matrix; bf16/fp16 operands with a float32 result) and ``sae_topk_chunk_f32`` folds each chunk into a
per-row running top-k of packed (value, column) keys; ``sae_topk_unpack`` writes values and
indices. k > KMAX and float64 select with torch over row chunks (sae_select), as do the threshold and
BatchTopK encoders. Centring folds
into the bias: (x - b_dec) @ W + b = x @ W + (b - b_dec @ W).
"""
from __future__ import annotations

import torch

from pyinterp.backends import sae_layout
from pyinterp.backends import sae_select as S
from pyinterp.backends.cuda import runtime
from pyinterp.backends.sae_select import batchtopk, threshold  # noqa: F401  (launchers)

_FILE = "sae.cu"
KMAX = 1024          # csrc/cuda/sae.cu KMAX
CHUNK_ELEMS = 1 << 24
COL_CHUNK = 1 << 14
_THREADS = 256
_MIN_KEY = -(2 ** 63)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _mm_f32(a, b):
    """a @ b with a float32 result; bf16/fp16 operands stay in their dtype (cuBLAS accumulates
    in float32) when torch offers ``out_dtype``, else they are upcast chunk by chunk."""
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    try:
        return torch.mm(a, b, out_dtype=torch.float32)
    except (RuntimeError, TypeError):
        return torch.mm(a.float(), b.float())


def _topk_epilogue(x, W_enc, b_enc, b_dec, k):
    n, d_sae = x.shape[0], W_enc.shape[1]
    dev = x.device
    bias = S.fold_bias(b_enc, b_dec, W_enc)  # (x - b_dec) @ W + b = x @ W + bias
    state = torch.full((n, k), _MIN_KEY, dtype=torch.int64, device=dev)
    cols = min(d_sae, COL_CHUNK)
    rows = max(1, min(n, CHUNK_ELEMS // cols))
    fold = runtime.kernel(_FILE, "sae_topk_chunk_f32")
    # columns outer: each W_enc column block is read once; the running state spans them
    for c0 in range(0, d_sae, cols):
        cc = min(cols, d_sae - c0)
        Wc = W_enc[:, c0:c0 + cc]
        for r0 in range(0, n, rows):
            rr = min(rows, n - r0)
            pre = _mm_f32(x[r0:r0 + rr], Wc).add_(bias[c0:c0 + cc])
            runtime.launch(fold, (rr,), (_THREADS,),
                           (runtime.ptr(pre), runtime.i64(cc), runtime.i64(cc), runtime.i64(c0),
                            runtime.i32(k), runtime.ptr(state[r0])))
    values = torch.empty(n, k, dtype=x.dtype, device=dev)
    indices = torch.empty(n, k, dtype=torch.int64, device=dev)
    if n:
        runtime.launch(runtime.kernel(_FILE, "sae_topk_unpack", x.dtype), (_cdiv(n * k, _THREADS),),
                       (_THREADS,), (runtime.ptr(state), runtime.i64(n), runtime.i32(k),
                                     runtime.ptr(values), runtime.ptr(indices)))
    return values, indices, values > 0


def topk(x, W_enc, b_enc, b_dec, k):
    if k <= KMAX and x.dtype != torch.float64:
        return _topk_epilogue(x, W_enc, b_enc, b_dec, k)
    return S.topk(x, W_enc, b_enc, b_dec, k)


def gather(coef, idx, W, stride_l, stride_d, d, bias, out_dtype):
    n, k = idx.shape
    out = torch.empty(n, d, dtype=out_dtype, device=coef.device)
    if n:
        W, stride_l, stride_d = sae_layout.row_major(W, stride_l, stride_d, n * k)
        # out in W's dtype (decode) or in the accumulation dtype (the encoder's grad x)
        name = "sae_gather" if out_dtype == W.dtype else "sae_gather_acc"
        runtime.launch(runtime.kernel(_FILE, name, W.dtype), (n, _cdiv(d, _THREADS)),
                       (_THREADS,), (runtime.ptr(coef), runtime.ptr(idx), runtime.ptr(W),
                                     runtime.i64(stride_l), runtime.i64(stride_d), runtime.ptr(bias),
                                     runtime.ptr(out), runtime.i32(k), runtime.i32(d)))
    return out


def gather_dot(g, idx, W, stride_l, stride_d):
    n, k = idx.shape
    d = g.shape[1]
    out = torch.empty(n, k, dtype=g.dtype, device=g.device)
    nnz = n * k
    if nnz:
        warps = _THREADS // 32
        runtime.launch(runtime.kernel(_FILE, "sae_gather_dot", W.dtype), (_cdiv(nnz, warps),),
                       (_THREADS,), (runtime.ptr(g), runtime.ptr(idx), runtime.ptr(W),
                                     runtime.i64(stride_l), runtime.i64(stride_d), runtime.ptr(out),
                                     runtime.i64(nnz), runtime.i32(k), runtime.i32(d)))
    return out


def scatter_rows(coef, idx, X, d_sae, out_dtype, transposed, want_colsum, deterministic):
    """Rows are written row-major (coalesced) and transposed after (sae_layout)."""
    n, k = idx.shape
    d = X.shape[1]
    dev = X.device
    cd = coef.dtype
    if deterministic or torch.are_deterministic_algorithms_enabled():
        rows = torch.empty(d_sae, d, dtype=out_dtype, device=dev)
        colsum = torch.empty(d_sae, dtype=cd, device=dev) if want_colsum else None
        flat = idx.reshape(-1)
        order = torch.sort(flat, stable=True).indices
        offsets = torch.zeros(d_sae + 1, dtype=torch.int64, device=dev)
        offsets[1:] = torch.cumsum(torch.bincount(flat, minlength=d_sae), 0)
        runtime.launch(runtime.kernel(_FILE, "sae_scatter_segment", out_dtype),
                       (d_sae, _cdiv(d, _THREADS)), (_THREADS,),
                       (runtime.ptr(coef), runtime.ptr(order), runtime.ptr(offsets), runtime.ptr(X),
                        runtime.ptr(rows), runtime.i64(d), runtime.i64(1), runtime.ptr(colsum),
                        runtime.i32(k), runtime.i32(d)))
    else:
        rows = torch.zeros(d_sae, d, dtype=cd, device=dev)
        colsum = torch.zeros(d_sae, dtype=cd, device=dev) if want_colsum else None
        if n:
            runtime.launch(runtime.kernel(_FILE, "sae_scatter_atomic", cd), (n, _cdiv(d, _THREADS)),
                           (_THREADS,), (runtime.ptr(coef), runtime.ptr(idx), runtime.ptr(X),
                                         runtime.ptr(rows), runtime.i64(d), runtime.i64(1),
                                         runtime.ptr(colsum), runtime.i32(k), runtime.i32(d)))
    if transposed:
        return sae_layout.transposed(rows, out_dtype), colsum
    return rows.to(out_dtype), colsum
