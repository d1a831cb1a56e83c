"""Persona-vector projections, reference (Chen et al. 2025, "Persona Vectors").

The projection of a hidden state a onto a persona direction v is a·v/|v| (``normalize``)
or a·v. For each layer l, token t and direction p, proj[l, b, t, p] = h[l, b, t] · u[l, p];
``reduce`` then takes the masked mean (or sum) over tokens, the last selected token, or keeps
every token. Written the obvious way (per layer, project every token, then reduce): this is
the oracle the fused kernels are tested against, not a fast path.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from pyinterp.reference import compute_dtype

Hidden = Union[torch.Tensor, Sequence[torch.Tensor]]



def last_index(mask: Optional[torch.Tensor], B: int, T: int, device) -> torch.Tensor:
    """(B,) int64: the last token with mask != 0 per row, -1 where a row selects nothing."""
    if mask is None:
        return torch.full((B,), T - 1, dtype=torch.int64, device=device)
    pos = torch.arange(T, device=device).expand(B, T)
    return torch.where(mask != 0, pos, torch.full_like(pos, -1)).amax(dim=1)


def _masked(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) with the tokens where w (B, T) is 0 set to 0 (not multiplied: NaN * 0)."""
    return torch.where((w != 0)[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def persona_project(hidden: Hidden, vectors: torch.Tensor, mask: Optional[torch.Tensor] = None,
                    reduce: str = "mean", normalize: bool = True) -> torch.Tensor:
    """hidden: (L, B, T, D) or L x (B, T, D); vectors: (L, P, D) or (P, D); mask: (B, T) or None.

    Returns (L, B, P) for reduce in {"mean", "sum", "last"}, (L, B, T, P) for "none", in the
    hidden states' dtype. Rows whose mask selects no token give NaN for "mean" and "last".
    Tokens with mask 0 are never read (NaN/Inf there change nothing: nan-semantics.md).
    """
    layers = list(hidden.unbind(0)) if isinstance(hidden, torch.Tensor) else list(hidden)
    B, T, _ = layers[0].shape
    cd = compute_dtype(layers[0].dtype)
    device = layers[0].device
    m = None if mask is None else mask.to(cd)
    outs = []
    for l, h in enumerate(layers):
        v = (vectors if vectors.dim() == 2 else vectors[l]).to(cd)
        if normalize:
            v = v / v.norm(dim=-1, keepdim=True)
        proj = h.to(cd) @ v.T  # (B, T, P)
        if reduce == "none":
            out = proj if m is None else _masked(proj, m)
        elif reduce in ("mean", "sum"):
            w = torch.ones(B, T, dtype=cd, device=device) if m is None else m
            out = _masked(proj * w[..., None], w).sum(dim=1)
            if reduce == "mean":
                out = out / w.sum(dim=1, keepdim=True)
        elif reduce == "last":
            idx = last_index(mask, B, T, device)
            out = proj[torch.arange(B, device=device), idx.clamp(min=0)]
            out = torch.where((idx >= 0)[:, None], out, torch.full_like(out, float("nan")))
        else:
            raise ValueError(f"reduce must be one of ('mean', 'sum', 'last', 'none'), got {reduce!r}")
        outs.append(out)
    return torch.stack(outs).to(layers[0].dtype)


def persona_pool(hidden: Hidden, mask: Optional[torch.Tensor] = None, reduce: str = "mean") -> torch.Tensor:
    """The masked token reduction of the hidden states themselves (what a persona vector is
    made of). hidden: (L, B, T, D) or L x (B, T, D) -> (L, B, D) in hidden's dtype."""
    layers = list(hidden.unbind(0)) if isinstance(hidden, torch.Tensor) else list(hidden)
    B, T, _ = layers[0].shape
    cd = compute_dtype(layers[0].dtype)
    device = layers[0].device
    outs = []
    for h in layers:
        hf = h.to(cd)
        if reduce == "last":
            idx = last_index(mask, B, T, device)
            out = hf[torch.arange(B, device=device), idx.clamp(min=0)]
            out = torch.where((idx >= 0)[:, None], out, torch.full_like(out, float("nan")))
        else:
            w = torch.ones(B, T, dtype=cd, device=device) if mask is None else mask.to(cd)
            out = _masked(hf * w[..., None], w).sum(dim=1)
            if reduce == "mean":
                out = out / w.sum(dim=1, keepdim=True)
        outs.append(out)
    return torch.stack(outs).to(layers[0].dtype)
