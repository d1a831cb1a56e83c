"""Torch-level encoder launchers shared by the GPU backends (triton, cuda): the
data-dependent-width encoders (threshold / JumpReLU, BatchTopK) and the top-k cases their
fused kernels do not cover (k above the register budget, float64).

Pre-activations are produced in row chunks (``CHUNK_ELEMS`` at a time), so the (N, d_sae)
matrix is never held in full; BatchTopK keeps a running top-(k*N) of the batch. Every
launcher returns ``(values, indices, mask)``; ``mask`` (N, width) marks the entries that carry
gradient. Written independently of the oracle (``pyinterp.reference.sae``), which the tests
compare these with: selection here is one stable descending sort per row chunk.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pyinterp._common import acc_dtype

CHUNK_ELEMS = 1 << 24


def fold_bias(b_enc, b_dec, W_enc, cols: int = 8192):
    """b_enc - b_dec @ W_enc in float32 (float64 for float64), column chunk by column chunk
    (never a float32 copy of the whole W_enc): (x - b_dec) @ W + b = x @ W + fold_bias."""
    cd = acc_dtype(W_enc.dtype)
    bias = b_enc.to(cd).clone()
    if b_dec is None:
        return bias
    bd = b_dec.to(cd)
    for c0 in range(0, W_enc.shape[1], cols):
        bias[c0:c0 + cols] -= bd @ W_enc[:, c0:c0 + cols].to(cd)
    return bias


class _Preacts:
    """Row chunks of x @ W_enc + fold_bias in the accumulation dtype."""

    def __init__(self, x, W_enc, b_enc, b_dec):
        cd = acc_dtype(x.dtype)
        self.x, self.W = x, W_enc.to(cd)
        self.bias = fold_bias(b_enc, b_dec, W_enc)
        n, d_sae = x.shape[0], W_enc.shape[1]
        self.rows = max(1, min(n, CHUNK_ELEMS // max(1, d_sae)))
        self.starts = range(0, n, self.rows)

    def __call__(self, r0: int) -> torch.Tensor:
        return torch.addmm(self.bias, self.x[r0:r0 + self.rows].to(self.W.dtype), self.W)


def _by_rule(key: torch.Tensor, width: int):
    """The ``width`` first entries of each row ordered by the tie rule (value descending,
    then latent index ascending): a stable descending sort keeps equal values in index order."""
    v, i = torch.sort(key, dim=1, descending=True, stable=True)
    if width > key.shape[1]:
        pad = width - key.shape[1]
        return F.pad(v, (0, pad)), F.pad(i, (0, pad))
    return v[:, :width], i[:, :width]


@torch.no_grad()
def topk(x, W_enc, b_enc, b_dec, k):
    """Per-row top-k by the tie rule over row chunks of the pre-activation."""
    n = x.shape[0]
    values = torch.empty(n, k, dtype=x.dtype, device=x.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=x.device)
    pre = _Preacts(x, W_enc, b_enc, b_dec)
    for r0 in pre.starts:
        v, i = _by_rule(pre(r0), k)
        values[r0:r0 + pre.rows] = torch.relu(v).to(x.dtype)
        indices[r0:r0 + pre.rows] = i
    return values, indices, values > 0


@torch.no_grad()
def threshold(x, W_enc, b_enc, b_dec, thr, max_active, out_dtype=None):
    """Entries strictly above the threshold (a float or (d_sae,) tensor), sorted by the tie
    rule, padded with 0 / 0 to the batch's largest count (one host sync) or ``max_active``
    (rows with more keep their max_active largest). Values in ``out_dtype`` (default x's)."""
    dev = x.device
    out_dtype = out_dtype or x.dtype
    pre = _Preacts(x, W_enc, b_enc, b_dec)
    thr = thr.to(pre.W.dtype) if isinstance(thr, torch.Tensor) else thr
    neg_inf = torch.tensor(float("-inf"), dtype=pre.W.dtype, device=dev)
    parts = []
    for r0 in pre.starts:
        p = pre(r0)
        sel = (p > thr) | p.isnan()  # NaN is active (docs/decisions/nan-semantics.md)
        count = sel.sum(1)
        width = max_active if max_active is not None else max(1, int(count.max()))
        v, i = _by_rule(torch.where(sel, p, neg_inf), width)
        keep = torch.arange(width, device=dev) < count.unsqueeze(1)
        parts.append((torch.where(keep, v, 0.0).to(out_dtype), torch.where(keep, i, 0), keep))
    if not parts:
        width = max_active or 1
        return (torch.zeros(0, width, dtype=out_dtype, device=dev),
                torch.zeros(0, width, dtype=torch.int64, device=dev),
                torch.zeros(0, width, dtype=torch.bool, device=dev))
    width = max(p[0].shape[1] for p in parts)
    return tuple(torch.cat([F.pad(t, (0, width - t.shape[1])) for t in ts])
                 for ts in zip(*parts))


@torch.no_grad()
def band(x, W_enc, b_enc, b_dec, thr, bandwidth, max_active):
    """The JumpReLU band selection (pyinterp.ops.jumprelu.function): entries above
    threshold - bandwidth/2, pre-activations in the accumulation dtype, -inf padding."""
    cd = acc_dtype(x.dtype)
    pre, idx, mask = threshold(x, W_enc, b_enc, b_dec, thr.to(cd) - bandwidth / 2, max_active,
                               out_dtype=cd)
    return pre.masked_fill(~mask, float("-inf")), idx, mask


@torch.no_grad()
def batchtopk(x, W_enc, b_enc, b_dec, k):
    """Exact BatchTopK: a running top-(k*N) of (value, flat index) over row chunks."""
    n, d_sae = x.shape[0], W_enc.shape[1]
    dev = x.device
    if n == 0:
        z = torch.zeros(0, 1, device=dev)
        return z.to(x.dtype), z.to(torch.int64), z.bool()
    m = k * n
    cand_v = cand_i = None
    pre = _Preacts(x, W_enc, b_enc, b_dec)
    for r0 in pre.starts:
        p = pre(r0).reshape(-1)
        flat = torch.arange(r0 * d_sae, r0 * d_sae + p.numel(), device=dev)
        if cand_v is not None:
            p = torch.cat([cand_v, p])
            flat = torch.cat([cand_i, flat])
        # tie rule over the batch: value desc, then flat (row-major) index asc
        if p.numel() > m:
            cand_v, cand_i = _topk_flat(p, flat, m)
        else:
            cand_v, cand_i = p, flat
    return group_rows(cand_v, cand_i, n, d_sae, x.dtype)


def _topk_flat(vals, flat, m):
    """The m best (value desc, flat asc; NaN above every number) of a 1-D candidate set."""
    nan = vals.isnan()
    if bool(nan.any()):
        first = torch.nonzero(nan).squeeze(1)
        first = first[torch.argsort(flat[first])][:m]
        if first.numel() == m or bool(nan.all()):
            return vals[first], flat[first]
        v, f = _topk_flat(vals[~nan], flat[~nan], m - first.numel())
        return torch.cat([vals[first], v]), torch.cat([flat[first], f])
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
    keep = (vals > 0) | vals.isnan()  # NaN propagates (docs/decisions/nan-semantics.md)
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
