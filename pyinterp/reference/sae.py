"""Sparse SAE ops, pure-torch reference (the oracle for every backend).

Dictionaries (Bricken et al. 2023; Templeton et al. 2024; Gao et al. 2024; Bussmann et al. 2024)
encode x: (N, d_in) into a sparse code given as ``(values, indices)``, each (N, k), and decode it
by gathering k rows of W_dec: (d_sae, d_in). Everything here is differentiable through autograd
and computes in float32 (float64 for float64 inputs); results come back in the input dtype.

Tie rule (docs/decisions/sae-topk-ties.md): latents are ordered by pre-activation, descending;
among exactly equal pre-activations the smaller latent index comes first. Every backend follows
it, so indices equal ``torch.topk``'s except among exact ties.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from pyinterp.reference import compute_dtype


def preacts(x, W_enc, b_enc, b_dec):
    """(x - b_dec) @ W_enc + b_enc in the compute dtype. x: (N, d_in) -> (N, d_sae)."""
    cd = compute_dtype(x.dtype)
    xc = x.to(cd)
    if b_dec is not None:
        xc = xc - b_dec.to(cd)
    return torch.addmm(b_enc.to(cd), xc, W_enc.to(cd))


def _order_rows(pre: torch.Tensor, sel: torch.Tensor, width: int):
    """Selected entries of each row sorted by (value desc, index asc), padded to ``width``.

    pre: (N, d_sae); sel: (N, d_sae) bool. Returns values (N, width) from ``pre`` (padding 0)
    and indices (N, width) int64 (padding 0). Differentiable in ``pre``.
    """
    n, d = pre.shape
    count = sel.sum(1)
    # Sort key: selected entries first (by value desc), unselected after. A stable sort on
    # the value keeps ascending index among equal values.
    neg_inf = torch.tensor(float("-inf"), dtype=pre.dtype, device=pre.device)
    key = torch.where(sel, pre.detach(), neg_inf)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    # Unselected -inf entries tie with selected -inf ones; push them behind with a second
    # stable sort on the selection flag.
    sel_sorted = torch.gather(sel, 1, order)
    flag_order = torch.sort((~sel_sorted).to(torch.int8), dim=1, stable=True).indices
    order = torch.gather(order, 1, flag_order)
    order = order[:, :width] if width <= d else F.pad(order, (0, width - d))
    keep = torch.arange(width, device=pre.device).unsqueeze(0) < count.unsqueeze(1)
    indices = torch.where(keep, order, torch.zeros_like(order))
    values = torch.where(keep, torch.gather(pre, 1, indices), torch.zeros((), dtype=pre.dtype,
                                                                        device=pre.device))
    return values, indices


def topk_select(pre: torch.Tensor, k: int):
    """Deterministic top-k of each row: (values, indices) each (N, k), sorted by the tie rule."""
    if pre.shape[0] == 0:
        return pre.new_zeros(0, k), torch.zeros(0, k, dtype=torch.int64, device=pre.device)
    kth = torch.topk(pre.detach(), k, dim=1, sorted=True).values[:, -1:]
    p = pre.detach()
    gt = p > kth
    eq = p == kth
    need = k - gt.sum(1, keepdim=True)
    sel = gt | (eq & (torch.cumsum(eq, 1) <= need))
    nan = torch.isnan(p)
    if nan.any():
        # NaN ranks above every number (as in torch.topk), NaNs by ascending index
        # (docs/decisions/nan-semantics.md): order by value with NaN as -inf, then NaN first.
        key = torch.where(nan, float("-inf"), p)
        order = torch.sort(key, dim=1, descending=True, stable=True).indices
        flag = (~torch.gather(nan, 1, order)).to(torch.int8)
        first = torch.sort(flag, dim=1, stable=True).indices
        i = torch.gather(order, 1, first)[:, :k]
        return torch.gather(pre, 1, i), i
    return _order_rows(pre, sel, k)


def topk_encode(x, W_enc, b_enc, b_dec, k: int):
    """x: (N, d_in), W_enc: (d_in, d_sae), b_enc: (d_sae,), b_dec: (d_in,) | None.

    Returns values (N, k) = ReLU of the k largest pre-activations, descending, in x.dtype, and
    indices (N, k) int64.
    """
    pre = preacts(x, W_enc, b_enc, b_dec)
    v, i = topk_select(pre, k)
    return torch.relu(v).to(x.dtype), i


def _pad_width(count: torch.Tensor, max_active: Optional[int]) -> int:
    if max_active is not None:
        return max_active
    return max(1, int(count.max().item()) if count.numel() else 1)


def threshold_encode(x, W_enc, b_enc, b_dec, threshold=0.0, max_active: Optional[int] = None):
    """ReLU (threshold 0) or JumpReLU (threshold (d_sae,)) code as (values, indices).

    Keeps pre-activations strictly above the threshold; per row sorted by the tie rule and
    padded with value 0 / index 0 to the batch's largest active count (or ``max_active``,
    keeping the largest entries of rows with more). No gradient flows to ``threshold``.
    """
    pre = preacts(x, W_enc, b_enc, b_dec)
    thr = threshold.to(pre.dtype) if isinstance(threshold, torch.Tensor) else threshold
    sel = (pre.detach() > thr) | torch.isnan(pre.detach())  # NaN is active (torch.relu(NaN) = NaN)
    width = _pad_width(sel.sum(1), max_active)
    if max_active is not None and pre.shape[0]:
        # keep the max_active largest entries of each row's active set
        key = torch.where(sel, pre.detach(), torch.tensor(float("-inf"), dtype=pre.dtype,
                                                          device=pre.device))
        kv, ki = topk_select(key, min(max_active, pre.shape[1]))
        sel = torch.zeros_like(sel).scatter_(1, ki, torch.gather(sel, 1, ki))
    v, i = _order_rows(pre, sel, width)
    return v.to(x.dtype), i


def batchtopk_encode(x, W_enc, b_enc, b_dec, k: int):
    """BatchTopK (Bussmann et al. 2024): keep the k*N largest ReLU pre-activations of the batch.

    Ties broken by (row, latent) in row-major order, smaller first. Per row the kept positive
    entries are sorted by the tie rule and padded like :func:`threshold_encode`.
    """
    pre = preacts(x, W_enc, b_enc, b_dec)
    n, d = pre.shape
    if n == 0:
        return pre.new_zeros(0, 1).to(x.dtype), torch.zeros(0, 1, dtype=torch.int64, device=pre.device)
    act = torch.relu(pre)
    flat = act.detach().reshape(1, -1)
    _, fi = topk_select(flat, k * n)
    sel = torch.zeros(n * d, dtype=torch.bool, device=pre.device)
    sel[fi[0]] = True
    sel = sel.view(n, d) & ((act.detach() > 0) | torch.isnan(act.detach()))
    v, i = _order_rows(act, sel, _pad_width(sel.sum(1), None))
    return v.to(x.dtype), i


def sparse_decode(values, indices, W_dec, b_dec=None, deterministic: bool = False):
    """out[n] = sum_j values[n, j] * W_dec[indices[n, j]] + b_dec. values/indices: (N, k),
    W_dec: (d_sae, d_in), b_dec: (d_in,) | None -> (N, d_in) in W_dec.dtype.

    ``deterministic`` is accepted for API parity (torch's CPU embedding_bag is deterministic).
    """
    cd = compute_dtype(W_dec.dtype)
    out = F.embedding_bag(indices, W_dec.to(cd), per_sample_weights=values.to(cd), mode="sum")
    if b_dec is not None:
        out = out + b_dec.to(cd)
    return out.to(W_dec.dtype)


def dense_from_sparse(values, indices, d_sae: int):
    """The dense code (N, d_sae) of a sparse one (padding entries add 0). Differentiable."""
    out = values.new_zeros(values.shape[0], d_sae)
    return out.scatter_add(1, indices, values)
