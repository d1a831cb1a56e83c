"""JumpReLU band selection, pure-torch reference (the oracle of the ``jumprelu`` family).

Training a JumpReLU threshold theta with the straight-through estimator of Rajamanoharan et
al. 2024 (rectangle kernel of bandwidth eps) needs, per row, the active latents (pre > theta)
and the inactive ones inside the band (|pre - theta| < eps / 2). Both are the latents with
pre > theta - eps / 2, so the selection is a threshold selection at the lowered threshold.
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp.reference import sae as ref


def band_bounds(threshold: torch.Tensor, bandwidth: float, dtype: torch.dtype):
    """(theta - eps/2, theta + eps/2) in ``dtype``: the band's open interval per latent."""
    t = threshold.to(dtype)
    half = bandwidth / 2
    return t - half, t + half


def jumprelu_select(x, W_enc, b_enc, b_dec, threshold, bandwidth: float,
                    max_active: Optional[int] = None):
    """Latents with pre > theta - eps/2 per row, sorted by the tie rule (value desc, index
    asc), padded to the batch's largest count (at least 1) or ``max_active`` (rows with more
    keep their largest). Returns ``pre`` (N, w) in float32 (float64 for float64 x), padding
    -inf, differentiable in x, W_enc, b_enc, b_dec; ``indices`` (N, w) int64 (padding 0).
    """
    pre = ref.preacts(x, W_enc, b_enc, b_dec)
    low, _ = band_bounds(threshold, bandwidth, pre.dtype)
    sel = (pre.detach() > low) | torch.isnan(pre.detach())  # NaN is active (nan-semantics.md)
    n, d = pre.shape
    if max_active is not None and n:
        key = torch.where(sel, pre.detach(), torch.tensor(float("-inf"), dtype=pre.dtype,
                                                          device=pre.device))
        _, ki = ref.topk_select(key, min(max_active, d))
        sel = torch.zeros_like(sel).scatter_(1, ki, torch.gather(sel, 1, ki))
    count = sel.sum(1)
    width = max_active if max_active is not None else max(1, int(count.max()) if n else 1)
    values, indices = ref._order_rows(pre, sel, width)
    keep = torch.arange(width, device=pre.device).unsqueeze(0) < count.unsqueeze(1)
    pad = torch.tensor(float("-inf"), dtype=pre.dtype, device=pre.device)
    return torch.where(keep, values, pad), indices
