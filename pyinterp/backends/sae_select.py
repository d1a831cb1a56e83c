"""Torch-level selection shared by the GPU backends of the sparse SAE ops (triton, cuda) for
the data-dependent-width encoders (threshold / JumpReLU, BatchTopK) and for the top-k cases
the fused kernels do not cover (k above their register budget, float64).

Pre-activations are produced in row chunks (``CHUNK_ELEMS`` at a time), so the (N, d_sae)
matrix is never held in full; BatchTopK keeps a running top-(k*N) of the batch. Results carry
no autograd: each backend wraps them in its own Function with its sparse backward kernels.
Every function returns ``(values, indices, mask)``; ``mask`` (N, width) marks the entries that
carry gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pyinterp.reference import sae as ref

CHUNK_ELEMS = 1 << 24


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def fold_bias(b_enc, b_dec, W_enc, cols: int = 8192):
    """b_enc - b_dec @ W_enc in float32 (float64 for float64), column chunk by column chunk
    (never a float32 copy of the whole W_enc): (x - b_dec) @ W + b = x @ W + fold_bias."""
    cd = compute_dtype(W_enc.dtype)
    bias = b_enc.to(cd).clone()
    if b_dec is None:
        return bias
    bd = b_dec.to(cd)
    for c0 in range(0, W_enc.shape[1], cols):
        bias[c0:c0 + cols] -= bd @ W_enc[:, c0:c0 + cols].to(cd)
    return bias


def _row_chunks(n: int, d_sae: int):
    rows = max(1, min(n, CHUNK_ELEMS // max(1, d_sae)))
    return range(0, n, rows), rows


@torch.no_grad()
def topk_chunked(x, W_enc, b_enc, b_dec, k):
    """Per-row top-k by the tie rule over row chunks of the pre-activation."""
    n = x.shape[0]
    values = torch.empty(n, k, dtype=x.dtype, device=x.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=x.device)
    starts, rows = _row_chunks(n, W_enc.shape[1])
    for r0 in starts:
        pre = ref.preacts(x[r0:r0 + rows], W_enc, b_enc, b_dec)
        v, i = ref.topk_select(pre, k)
        values[r0:r0 + rows] = torch.relu(v).to(x.dtype)
        indices[r0:r0 + rows] = i
    return values, indices, values > 0


@torch.no_grad()
def threshold_chunked(x, W_enc, b_enc, b_dec, threshold, max_active):
    n, d_sae = x.shape[0], W_enc.shape[1]
    dev = x.device
    parts = []
    starts, rows = _row_chunks(n, d_sae)
    for r0 in starts:
        pre = ref.preacts(x[r0:r0 + rows], W_enc, b_enc, b_dec)
        thr = threshold.to(pre.dtype) if isinstance(threshold, torch.Tensor) else threshold
        sel = pre > thr
        count = sel.sum(1)
        if max_active is not None:
            key = torch.where(sel, pre, torch.tensor(float("-inf"), dtype=pre.dtype, device=dev))
            _, ki = ref.topk_select(key, min(max_active, d_sae))
            sel = torch.zeros_like(sel).scatter_(1, ki, torch.gather(sel, 1, ki))
            count = sel.sum(1)
            width = max_active
        else:
            width = max(1, int(count.max()))
        v, i = ref._order_rows(pre, sel, width)
        parts.append((v.to(x.dtype), i, count))
    width = max_active if max_active is not None else max([p[0].shape[1] for p in parts] or [1])
    if not parts:
        z = torch.zeros(0, width, device=dev)
        return z.to(x.dtype), z.to(torch.int64), z.bool()
    values = torch.cat([F.pad(v, (0, width - v.shape[1])) for v, _, _ in parts])
    indices = torch.cat([F.pad(i, (0, width - i.shape[1])) for _, i, _ in parts])
    counts = torch.cat([c for _, _, c in parts])
    return values, indices, torch.arange(width, device=dev) < counts.unsqueeze(1)


@torch.no_grad()
def batchtopk_chunked(x, W_enc, b_enc, b_dec, k):
    """Exact BatchTopK: a running top-(k*N) of (value, flat index) over row chunks."""
    n, d_sae = x.shape[0], W_enc.shape[1]
    dev = x.device
    if n == 0:
        z = torch.zeros(0, 1, device=dev)
        return z.to(x.dtype), z.to(torch.int64), z.bool()
    m = k * n
    cand_v = cand_i = None
    starts, rows = _row_chunks(n, d_sae)
    for r0 in starts:
        pre = ref.preacts(x[r0:r0 + rows], W_enc, b_enc, b_dec).reshape(-1)
        flat = torch.arange(r0 * d_sae, r0 * d_sae + pre.numel(), device=dev)
        if cand_v is not None:
            pre = torch.cat([cand_v, pre])
            flat = torch.cat([cand_i, flat])
        # tie rule over the batch: value desc, then flat (row-major) index asc
        if pre.numel() > m:
            cand_v, cand_i = _topk_flat(pre, flat, m)
        else:
            cand_v, cand_i = pre, flat
    return group_rows(cand_v, cand_i, n, d_sae, x.dtype)


def _topk_flat(vals, flat, m):
    """The m best (value desc, flat asc) of a 1-D candidate set."""
    kth = torch.topk(vals, m, sorted=True).values[-1]
    gt = vals > kth
    eq = vals == kth
    need = m - int(gt.sum())
    eq_pos = torch.nonzero(eq).squeeze(1)
    eq_pos = eq_pos[torch.argsort(flat[eq_pos])][:need]
    keep = torch.cat([torch.nonzero(gt).squeeze(1), eq_pos])
    return vals[keep], flat[keep]


def group_rows(vals, flat, n, d_sae, dtype):
    """Scatter batch-selected (value, flat index) pairs into per-row codes sorted by the tie
    rule, keeping positive values, padded with 0 / 0. Returns values, indices, mask."""
    dev = vals.device
    keep = vals > 0
    vals, flat = vals[keep], flat[keep]
    flat, o = torch.sort(flat)                       # (row, col) ascending
    vals = vals[o]
    o = torch.sort(vals, descending=True, stable=True).indices
    vals, flat = vals[o], flat[o]
    rows = torch.div(flat, d_sae, rounding_mode="floor")
    o = torch.sort(rows, stable=True).indices         # rows ascending, (value desc, col asc) inside
    vals, flat, rows = vals[o], flat[o], rows[o]
    counts = torch.bincount(rows, minlength=n)
    width = max(1, int(counts.max())) if counts.numel() else 1
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=dev) - starts[rows]
    values = torch.zeros(n, width, dtype=dtype, device=dev)
    indices = torch.zeros(n, width, dtype=torch.int64, device=dev)
    values[rows, pos] = vals.to(dtype)
    indices[rows, pos] = flat - rows * d_sae
    return values, indices, torch.arange(width, device=dev) < counts.unsqueeze(1)
