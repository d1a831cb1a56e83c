"""CPU backend of the sparse SAE ops: torch.addmm (MKL/OpenBLAS) over row x column chunks of
the pre-activation, followed by the multi-threaded C++ epilogue in ``csrc/cpu/sae.cpp``
(running per-row top-k, threshold selection), the gather decoder and the sparse backward.

The (N, d_sae) pre-activation never exists: at most ``CHUNK_ELEMS`` of it at a time
(docs/decisions/sae-cpu-chunked-epilogue.md). Every kernel here is deterministic (no atomics;
scatters sum each latent's entries in a fixed order), so ``deterministic`` changes nothing.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from pyinterp.backends.cpu import dtype_code, ext, num_threads
from pyinterp.backends.sae_select import group_rows

# Pre-activation chunk: at most CHUNK_ELEMS values (16 MiB in float32). Rows are favoured
# over columns (MKL's GEMM is markedly slower on short row blocks), then columns fill the rest:
# N=4096, d_sae=16384 gives (4096, 1024) chunks; the running per-row top-k lives across them.
CHUNK_ELEMS = 1 << 22
MIN_COLS = 256


def _cd(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _p(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


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


def _topk_forward(x, W_enc, b_enc, b_dec, k):
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


def _threshold_forward(x, W_enc, b_enc, b_dec, threshold, max_active):
    n, d_sae = x.shape[0], W_enc.shape[1]
    pre = _Pre(x, W_enc, b_enc, b_dec)
    C, nt = ext(), num_threads()
    thr_t = threshold.to(pre.cd).contiguous() if isinstance(threshold, torch.Tensor) else None
    thr_s = 0.0 if thr_t is not None else float(threshold)
    cmp = thr_t if thr_t is not None else thr_s
    R, _ = _chunks(n, d_sae, full_rows=True)
    parts = []
    for r0 in range(0, n, R):
        rr = min(R, n - r0)
        buf = pre.chunk(r0, rr, 0, d_sae)
        width = max_active if max_active is not None else max(1, int((buf > cmp).sum(1).max()))
        v = torch.empty(rr, width, dtype=x.dtype)
        i = torch.empty(rr, width, dtype=torch.int64)
        c = torch.empty(rr, dtype=torch.int64)
        C.sae_select_threshold(buf.data_ptr(), rr, d_sae, thr_s, _p(thr_t), width, v.data_ptr(),
                               i.data_ptr(), c.data_ptr(), dtype_code(v), nt)
        parts.append((v, i, c))
    width = max_active if max_active is not None else max([p[0].shape[1] for p in parts] or [1])
    values = torch.cat([F.pad(v, (0, width - v.shape[1])) for v, _, _ in parts]) if n else \
        torch.zeros(0, width, dtype=x.dtype)
    indices = torch.cat([F.pad(i, (0, width - i.shape[1])) for _, i, _ in parts]) if n else \
        torch.zeros(0, width, dtype=torch.int64)
    counts = torch.cat([c for _, _, c in parts]) if n else torch.zeros(0, dtype=torch.int64)
    return values, indices, torch.arange(width) < counts.unsqueeze(1)


def _batchtopk_forward(x, W_enc, b_enc, b_dec, k):
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


def _scatter_rows(coef, X, indices, d_sae, out_dtype, transposed, want_colsum=False):
    """out[l] = sum over entries e with indices e == l of coef[e] * X[row(e)] (deterministic).
    coef: (N, k) compute dtype; X: (N, d) compute dtype. out (d_sae, d) or transposed (d, d_sae)."""
    n, k = indices.shape
    d = X.shape[1]
    offsets, order = _csr(indices, d_sae)
    out = torch.empty((d, d_sae) if transposed else (d_sae, d), dtype=out_dtype)
    colsum = torch.empty(d_sae, dtype=coef.dtype) if want_colsum else None
    ext().sae_scatter_rows(coef.data_ptr(), X.data_ptr(), offsets.data_ptr(), order.data_ptr(), k,
                           d_sae, d, transposed, out.data_ptr(), _p(colsum), dtype_code(out),
                           num_threads())
    return out, colsum


def _gather(coef, indices, W, bias):
    """out[n] = bias + sum_j coef[n, j] * W[indices[n, j]] in W's dtype; coef in the compute
    dtype."""
    n, k = indices.shape
    d = W.shape[1]
    out = torch.empty(n, d, dtype=W.dtype)
    if n:
        ext().sae_gather(coef.data_ptr(), indices.data_ptr(), W.data_ptr(), _p(bias), out.data_ptr(),
                         n, k, d, dtype_code(W), num_threads())
    return out


def _gather_dot(g, indices, W):
    """out[n, j] = dot(g[n], W[indices[n, j]]); g (N, d) in the compute dtype."""
    n, k = indices.shape
    out = torch.empty(n, k, dtype=g.dtype)
    if n:
        ext().sae_gather_dot(g.data_ptr(), indices.data_ptr(), W.data_ptr(), out.data_ptr(), n, k,
                             W.shape[1], dtype_code(W), num_threads())
    return out


def encoder_backward(ctx, grad_values):
    """Gradients of any sparse encoder through its kept entries (mask), never dense."""
    x, W_enc, b_dec, indices, mask = ctx.saved_tensors
    has_b_dec = ctx.has_b_dec
    cd = _cd(x.dtype)
    d_sae = W_enc.shape[1]
    g = (grad_values.to(cd) * mask).contiguous()
    need_x, need_W, need_be, need_bd = ctx.needs_input_grad[:4]
    need_bd = need_bd and has_b_dec
    gx = gW = gbe = gbd = None
    if need_W:
        xc = x.to(cd)
        if has_b_dec:
            xc = xc - b_dec.to(cd)
        gW, colsum = _scatter_rows(g, xc.contiguous(), indices, d_sae, W_enc.dtype, True, need_be)
        if need_be:
            gbe = colsum.to(W_enc.dtype)
    elif need_be:
        gbe = torch.zeros(d_sae, dtype=cd).index_add_(0, indices.reshape(-1), g.reshape(-1))
        gbe = gbe.to(W_enc.dtype)
    if need_x or need_bd:
        WT = W_enc.t().to(cd).contiguous()  # (d_sae, d_in): rows gathered contiguously
        gxc = _gather(g, indices, WT, None)
        if need_x:
            gx = gxc.to(x.dtype)
        if need_bd:
            gbd = (-gxc.sum(0)).to(x.dtype)
    return gx, gW, gbe, gbd


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, kind, arg, max_active):
        if kind == "topk":
            values, indices, mask = _topk_forward(x, W_enc, b_enc, b_dec, arg)
        elif kind == "threshold":
            values, indices, mask = _threshold_forward(x, W_enc, b_enc, b_dec, arg, max_active)
        else:
            values, indices, mask = _batchtopk_forward(x, W_enc, b_enc, b_dec, arg)
        ctx.has_b_dec = b_dec is not None
        ctx.save_for_backward(x, W_enc, b_dec if b_dec is not None else x.new_zeros(0), indices,
                              mask)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, grad_indices):
        gx, gW, gbe, gbd = encoder_backward(ctx, grad_values)
        return gx, gW, gbe, gbd, None, None, None


def topk_encode(x, W_enc, b_enc, b_dec, k):
    return _Encode.apply(x.contiguous(), W_enc, b_enc, b_dec, "topk", k, None)


def threshold_encode(x, W_enc, b_enc, b_dec, threshold, max_active):
    return _Encode.apply(x.contiguous(), W_enc, b_enc, b_dec, "threshold", threshold, max_active)


def batchtopk_encode(x, W_enc, b_enc, b_dec, k):
    return _Encode.apply(x.contiguous(), W_enc, b_enc, b_dec, "batchtopk", k, None)


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, W_dec, b_dec):
        cd = _cd(W_dec.dtype)
        W = W_dec.contiguous()
        coef = values.to(cd).contiguous()
        out = _gather(coef, indices, W, None if b_dec is None else b_dec.contiguous())
        ctx.save_for_backward(coef, indices, W)
        ctx.has_b_dec = b_dec is not None
        ctx.values_dtype = values.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        coef, indices, W = ctx.saved_tensors
        cd = coef.dtype
        g = grad_out.to(cd).contiguous()
        need_v, _, need_W, need_b = ctx.needs_input_grad
        gv = gW = gb = None
        if need_v:
            gv = _gather_dot(g, indices, W).to(ctx.values_dtype)
        if need_W:
            gW, _ = _scatter_rows(coef, g, indices, W.shape[0], W.dtype, False)
        if need_b and ctx.has_b_dec:
            gb = g.sum(0).to(W.dtype)
        return gv, None, gW, gb


def sparse_decode(values, indices, W_dec, b_dec, deterministic):
    # every CPU kernel is deterministic; the flag needs no separate path here
    return _Decode.apply(values, indices.contiguous(), W_dec, b_dec)
