"""Sparse-aware autograd around dense SAE codes (SAELens's training SAEs keep the dense
(N, d_sae) pre-activation and code as outputs): the linear maps run on the code's support.

- :func:`dense_pre`: ``x @ W_enc + b_enc`` with exactly the ops (so the values) of
  ``sae_in @ W_enc + b_enc``; its backward uses only the non-zeros of the incoming gradient
  (or the dense GEMMs when there are too many).
- :func:`gathered_pre`: the pre-activations at given indices, read from the dense ones already
  computed, with a sparse backward: grad x and grad W_enc from one gather/scatter of
  :func:`pyinterp.ops.sparse_decode` instead of two dense GEMMs.
- :func:`decode_values` / :func:`decode`: ``F @ W_dec + b_dec`` from the code's support through
  :func:`pyinterp.ops.sparse_decode`.

Above :data:`DENSE_FRACTION` non-zeros the dense GEMM is faster and is used
(docs/decisions/sae-accelerate-training.md).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from pyinterp.sae import _kernels as K

# Above this share of non-zeros a dense GEMM beats the gather/scatter kernels (CPU and GPU
# kernels both read one W row per non-zero; a GEMM reuses each row across the batch).
DENSE_FRACTION = 1 / 16
# Rows sampled to estimate the density before scanning a whole (N, d_sae) tensor.
_SAMPLE_ROWS = 64

Support = Tuple[torch.Tensor, Optional[torch.Tensor]]  # idx (N, w) int64, valid (N, w) bool | None


def probably_dense(t: torch.Tensor) -> bool:
    """Cheap estimate from the first rows of a 2-D tensor: is it too dense for the kernels?"""
    head = t[:_SAMPLE_ROWS]
    return head.numel() > 0 and float((head != 0).float().mean()) > DENSE_FRACTION


def support_from_coo(rows: torch.Tensor, cols: torch.Tensor, n_rows: int) -> Support:
    """Entries (rows[e], cols[e]), rows sorted ascending -> per-row indices (n_rows, w),
    left-aligned, padded with index 0 and ``valid`` False (None when nothing is padded)."""
    counts = torch.bincount(rows, minlength=n_rows)
    width = max(int(counts.max()), 1) if n_rows and rows.numel() else 1
    starts = counts.cumsum(0) - counts
    pos = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    idx = torch.zeros(n_rows, width, dtype=torch.int64, device=rows.device)
    idx[rows, pos] = cols
    if rows.numel() == n_rows * width:
        return idx, None
    valid = torch.zeros(n_rows, width, dtype=torch.bool, device=rows.device)
    valid[rows, pos] = True
    return idx, valid


def support_of(mask: torch.Tensor) -> Support:
    """Per-row positions of the True entries of a (N, d) mask (see :func:`support_from_coo`)."""
    nz = mask.nonzero()
    return support_from_coo(nz[:, 0], nz[:, 1], mask.shape[0])


def _too_wide(support: Support, d: int) -> bool:
    idx, valid = support
    nnz = idx.numel() if valid is None else int(valid.sum())
    return nnz > DENSE_FRACTION * idx.shape[0] * d or idx.shape[1] > d // 2


def gather(t: torch.Tensor, support: Support) -> torch.Tensor:
    """t (N, d) at the support -> (N, w), 0 at padding; differentiable in t."""
    idx, valid = support
    vals = t.gather(1, idx)
    return vals if valid is None else vals.masked_fill(~valid, 0)


def _sparse_linear_grads(x2, W, vals, idx, need_x, need_W, need_b):
    """Gradients of pre = x @ W + b from their values ``vals`` (N, w) at ``idx`` (0 elsewhere):
    grad x (N, d_in), grad W (d_in, d_sae), grad b (d_sae,) (each None when not needed)."""
    gx = gW = gb = None
    with torch.enable_grad():
        Wt = W.detach().t()
        if need_W:
            Wt.requires_grad_(True)
        # sum_j vals[n, j] W[:, idx[n, j]] is grad x; its W-gradient against x is grad W
        out = K.sparse_decode(vals, idx, Wt, None, check_indices=False)
        if need_W:
            (gWt,) = torch.autograd.grad(out, Wt, x2.to(out.dtype))
            gW = gWt.t().contiguous()
    if need_x:
        gx = out.detach()
    if need_b:
        gb = torch.zeros(W.shape[1], dtype=vals.dtype, device=vals.device).index_add_(
            0, idx.reshape(-1), vals.reshape(-1))
    return gx, gW, gb


class _DensePre(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return x @ W + b  # the exact ops (and so values) of SAELens's encoders

    @staticmethod
    def backward(ctx, grad):
        x, W = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        x2 = x.reshape(-1, x.shape[-1])
        G = grad.reshape(-1, grad.shape[-1])
        support = None
        if not probably_dense(G):
            support = support_of(G != 0)
            if _too_wide(support, G.shape[1]):
                support = None
        if support is None:
            gx = (G @ W.t()).reshape(x.shape) if need_x else None
            gW = x2.t() @ G if need_W else None
            gb = G.sum(0) if need_b else None
            return gx, gW, gb
        gx, gW, gb = _sparse_linear_grads(x2, W, gather(G, support), support[0], need_x, need_W, need_b)
        return None if gx is None else gx.reshape(x.shape), gW, gb


def dense_pre(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """``x @ W_enc + b_enc`` with a backward that uses only the gradient's non-zeros."""
    return _DensePre.apply(x, W_enc, b_enc)


class _GatheredPre(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b, idx, pre):
        ctx.save_for_backward(x, W, idx)
        return pre.gather(1, idx)

    @staticmethod
    def backward(ctx, grad):
        x, W, idx = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad[:3]
        gx, gW, gb = _sparse_linear_grads(x, W, grad.contiguous(), idx, need_x, need_W, need_b)
        return gx, gW, gb, None, None


def gathered_pre(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, idx: torch.Tensor,
                 pre: torch.Tensor) -> torch.Tensor:
    """``pre.gather(1, idx)`` where pre = x @ W_enc + b_enc (x (N, d_in), already computed,
    not differentiated), differentiable in x, W_enc, b_enc with a sparse backward. Entries
    at padding must receive zero gradient (mask the result)."""
    return _GatheredPre.apply(x, W_enc, b_enc, idx, pre.detach())


def scatter_dense(vals: torch.Tensor, support: Support, d: int) -> torch.Tensor:
    """The dense (N, d) tensor with ``vals`` at the support, 0 elsewhere; differentiable."""
    out = torch.zeros(vals.shape[0], d, dtype=vals.dtype, device=vals.device)
    return out.scatter_add(1, support[0], vals)  # add: padding slots (index 0, value 0) add 0


def decode(F: torch.Tensor, W_dec: torch.Tensor, b_dec: Optional[torch.Tensor],
           support: Optional[Support] = None,
           inv_norm: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``(F * inv_norm) @ W_dec + b_dec`` for F (..., d_sae) from its support (default: its
    non-zeros); gradients reach F at the support only. None when F is too dense (use a GEMM)."""
    lead = F.shape[:-1]
    F2 = F.reshape(-1, F.shape[-1])
    if support is None:
        if probably_dense(F2):
            return None
        support = support_of(F2 != 0)
    if _too_wide(support, F2.shape[1]):
        return None
    out = decode_values(gather(F2, support), support[0], W_dec, b_dec, inv_norm)
    return out.reshape(*lead, W_dec.shape[1])


def decode_values(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor,
                  b_dec: Optional[torch.Tensor], inv_norm: Optional[torch.Tensor] = None):
    """sum_j vals[n, j] (* inv_norm[idx]) W_dec[idx[n, j]] (+ b_dec): (N, w) -> (N, d_in)."""
    if inv_norm is not None:  # SAELens's F * (1 / ||W_dec_i||), entry by entry
        vals = vals * inv_norm[idx]
    return K.sparse_decode(vals.to(W_dec.dtype), idx, W_dec, b_dec, check_indices=False)
