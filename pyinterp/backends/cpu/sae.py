"""Sparse SAE launchers on the CPU backend (the contract is in :mod:`pyinterp.ops.sae.function`):
torch.addmm (MKL/OpenBLAS) over row x column chunks of the pre-activation, followed by the
multi-threaded C++ epilogue in ``csrc/cpu/sae.cpp`` (running per-row top-k, threshold
selection), the gather decoder and the sparse backward.

The (N, d_sae) pre-activation never exists: at most ``CHUNK_ELEMS`` of it at a time
(docs/decisions/sae-cpu-chunked-epilogue.md). Every kernel here is deterministic (no atomics;
scatters sum each latent's entries in a fixed order), so ``deterministic`` changes nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pyinterp._common import acc_dtype as _cd
from pyinterp.backends.cpu import dtype_code, ext, num_threads
from pyinterp.backends.cpu import ptr as _p
from pyinterp.backends.sae_select import group_rows

# Pre-activation chunk: at most CHUNK_ELEMS values (16 MiB in float32). Rows are favoured
# over columns (MKL's GEMM is markedly slower on short row blocks), then columns fill the rest:
# N=4096, d_sae=16384 gives (4096, 1024) chunks; the running per-row top-k lives across them.
CHUNK_ELEMS = 1 << 22
MIN_COLS = 256


def _chunks(n: int, d_sae: int, k_state: int = 0, full_rows: bool = False):
    """(rows, cols) of one pre-activation chunk."""
    if full_rows:
        cols = d_sae
    else:
        cols = min(d_sae, max(MIN_COLS, CHUNK_ELEMS // max(n, 1)))
    rows = CHUNK_ELEMS // max(cols, 1)
    if k_state:  # keep the running top-k state (rows x k) within the same budget
        rows = min(rows, max(1, CHUNK_ELEMS // k_state))
    return max(1, min(rows, n)), cols


class _Pre:
    """Chunked pre-activations (x - b_dec) @ W_enc + b_enc in the compute dtype."""

    def __init__(self, x, W_enc, b_enc, b_dec):
        self.cd = _cd(x.dtype)
        xc = x.to(self.cd)
        if b_dec is not None:
            xc = xc - b_dec.to(self.cd)
        self.xc = xc
        self.W = W_enc.to(self.cd)
        self.b = b_enc.to(self.cd)
        self.buf = None

    def chunk(self, r0, rr, c0, cc):
        need = rr * cc
        if self.buf is None or self.buf.numel() < need:
            self.buf = torch.empty(need, dtype=self.cd)
        out = self.buf[:need].view(rr, cc)
        torch.addmm(self.b[c0:c0 + cc], self.xc[r0:r0 + rr], self.W[:, c0:c0 + cc], out=out)
        return out


def topk(x, W_enc, b_enc, b_dec, k):
    n, d_sae = x.shape[0], W_enc.shape[1]
    pre = _Pre(x, W_enc, b_enc, b_dec)
    C, nt, pcode = ext(), num_threads(), (3 if pre.cd == torch.float64 else 0)
    values = torch.empty(n, k, dtype=x.dtype)
    indices = torch.empty(n, k, dtype=torch.int64)
    R, CC = _chunks(n, d_sae, k)
    hv = torch.empty(R, k, dtype=pre.cd)
    hi = torch.empty(R, k, dtype=torch.int64)
    cnt = torch.empty(R, dtype=torch.int64)
    for r0 in range(0, n, R):
        rr = min(R, n - r0)
        cnt.zero_()
        for c0 in range(0, d_sae, CC):
            cc = min(CC, d_sae - c0)
            buf = pre.chunk(r0, rr, c0, cc)
            C.sae_topk_update(buf.data_ptr(), cc, rr, cc, c0, k, hv.data_ptr(), hi.data_ptr(),
                              cnt.data_ptr(), pcode, nt)
        C.sae_topk_finalize(hv.data_ptr(), hi.data_ptr(), rr, k, values[r0].data_ptr(),
                            indices[r0].data_ptr(), dtype_code(values), nt)
    return values, indices, values > 0


def threshold(x, W_enc, b_enc, b_dec, thr, max_active, out_dtype=None):
    """``out_dtype``: the values' dtype (default x's; the JumpReLU band selection asks for the
    accumulation dtype)."""
    n, d_sae = x.shape[0], W_enc.shape[1]
    out_dtype = out_dtype or x.dtype
    pre = _Pre(x, W_enc, b_enc, b_dec)
    C, nt = ext(), num_threads()
    thr_t = thr.to(pre.cd).contiguous() if isinstance(thr, torch.Tensor) else None
    thr_s = 0.0 if thr_t is not None else float(thr)
    cmp = thr_t if thr_t is not None else thr_s
    R, _ = _chunks(n, d_sae, full_rows=True)
    parts = []
    for r0 in range(0, n, R):
        rr = min(R, n - r0)
        buf = pre.chunk(r0, rr, 0, d_sae)
        active = (buf > cmp) | buf.isnan()  # NaN is active (docs/decisions/nan-semantics.md)
        width = max_active if max_active is not None else max(1, int(active.sum(1).max()))
        v = torch.empty(rr, width, dtype=out_dtype)
        i = torch.empty(rr, width, dtype=torch.int64)
        c = torch.empty(rr, dtype=torch.int64)
        C.sae_select_threshold(buf.data_ptr(), rr, d_sae, thr_s, _p(thr_t), width, v.data_ptr(),
                               i.data_ptr(), c.data_ptr(), dtype_code(v), nt)
        parts.append((v, i, c))
    width = max_active if max_active is not None else max([p[0].shape[1] for p in parts] or [1])
    values = torch.cat([F.pad(v, (0, width - v.shape[1])) for v, _, _ in parts]) if n else \
        torch.zeros(0, width, dtype=out_dtype)
    indices = torch.cat([F.pad(i, (0, width - i.shape[1])) for _, i, _ in parts]) if n else \
        torch.zeros(0, width, dtype=torch.int64)
    counts = torch.cat([c for _, _, c in parts]) if n else torch.zeros(0, dtype=torch.int64)
    return values, indices, torch.arange(width) < counts.unsqueeze(1)


def batchtopk(x, W_enc, b_enc, b_dec, k):
    n, d_sae = x.shape[0], W_enc.shape[1]
    m = k * n
    if n == 0:
        return (torch.zeros(0, 1, dtype=x.dtype), torch.zeros(0, 1, dtype=torch.int64),
                torch.zeros(0, 1, dtype=torch.bool))
    pre = _Pre(x, W_enc, b_enc, b_dec)
    C, pcode = ext(), (3 if pre.cd == torch.float64 else 0)
    hv = torch.empty(m, dtype=pre.cd)
    hi = torch.empty(m, dtype=torch.int64)
    cnt = torch.zeros(1, dtype=torch.int64)
    R, CC = _chunks(n, d_sae)
    for r0 in range(0, n, R):
        rr = min(R, n - r0)
        for c0 in range(0, d_sae, CC):
            cc = min(CC, d_sae - c0)
            buf = pre.chunk(r0, rr, c0, cc)
            C.sae_topk_update_batch(buf.data_ptr(), cc, rr, cc, r0 * d_sae + c0, d_sae, m,
                                    hv.data_ptr(), hi.data_ptr(), cnt.data_ptr(), pcode)
    return group_rows(hv, hi, n, d_sae, x.dtype)


# ----------------------------------------------------------------------------------------
# sparse backward pieces


def _csr(indices: torch.Tensor, d_sae: int):
    flat = indices.reshape(-1)
    offsets = torch.empty(d_sae + 1, dtype=torch.int64)
    order = torch.empty(flat.numel(), dtype=torch.int64)
    ext().sae_build_csr(flat.data_ptr(), flat.numel(), d_sae, offsets.data_ptr(), order.data_ptr())
    return offsets, order


def _rows(W, stride_l, stride_d, d, dtype):
    """W's latent rows as a contiguous (n_latents, d) matrix of ``dtype``: W itself when it is
    laid out so, else a copy (e.g. W_enc's columns: the C++ kernels read contiguous rows)."""
    if stride_d == 1 and stride_l == d and W.dtype == dtype and W.is_contiguous():
        return W
    return torch.as_strided(W, (W.numel() // d, d), (stride_l, stride_d)).to(dtype).contiguous()


def gather(coef, idx, W, stride_l, stride_d, d, bias, out_dtype):
    """out[n] = bias + sum_j coef[n, j] * W[idx[n, j]] in ``out_dtype``; coef in the
    accumulation dtype."""
    n, k = idx.shape
    rows = _rows(W, stride_l, stride_d, d, out_dtype)
    out = torch.empty(n, d, dtype=out_dtype)
    if n:
        ext().sae_gather(coef.data_ptr(), idx.data_ptr(), rows.data_ptr(), _p(bias),
                         out.data_ptr(), n, k, d, dtype_code(rows), num_threads())
    return out


def gather_dot(g, idx, W, stride_l, stride_d):
    """out[n, j] = dot(g[n], W[idx[n, j]]); g (N, d) in the accumulation dtype."""
    n, k = idx.shape
    d = g.shape[1]
    rows = _rows(W, stride_l, stride_d, d, W.dtype)
    out = torch.empty(n, k, dtype=g.dtype)
    if n:
        ext().sae_gather_dot(g.data_ptr(), idx.data_ptr(), rows.data_ptr(), out.data_ptr(), n, k,
                             d, dtype_code(rows), num_threads())
    return out


def scatter_rows(coef, idx, X, d_sae, out_dtype, transposed, want_colsum, deterministic):
    """out[l] = sum over entries e with idx e == l of coef[e] * X[row(e)]: (d_sae, d), or its
    transpose (d, d_sae). coef (N, k), X (N, d) in the accumulation dtype. Every entry of a
    latent is summed in a fixed order (no atomics), so ``deterministic`` changes nothing."""
    n, k = idx.shape
    d = X.shape[1]
    offsets, order = _csr(idx, d_sae)
    out = torch.empty((d, d_sae) if transposed else (d_sae, d), dtype=out_dtype)
    colsum = torch.empty(d_sae, dtype=coef.dtype) if want_colsum else None
    ext().sae_scatter_rows(coef.data_ptr(), X.data_ptr(), offsets.data_ptr(), order.data_ptr(), k,
                           d_sae, d, transposed, out.data_ptr(), _p(colsum), dtype_code(out),
                           num_threads())
    return out, colsum
