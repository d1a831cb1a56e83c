"""Initialisation helpers: decoder directions and the decoder bias from a data sample."""
from __future__ import annotations

from typing import Optional

import torch


def geometric_median(x: torch.Tensor, max_iter: int = 200, tol: float = 1e-7,
                     eps: float = 1e-12) -> torch.Tensor:
    """The geometric median of the rows of ``x`` by Weiszfeld's iteration.

    x: (N, d) -> (d,), in x's dtype; computed in float64. Starts at the mean and stops when a
    step moves less than ``tol`` times the estimate's norm (one host sync per iteration;
    this runs once, at initialisation).
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty (N, d) tensor, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf; cannot compute a geometric median")
    xd = x.to(torch.float64)
    y = xd.mean(0)
    for _ in range(max_iter):
        dist = (xd - y).norm(dim=1).clamp_min(eps)
        w = 1.0 / dist
        y_new = (w[:, None] * xd).sum(0) / w.sum()
        moved = float((y_new - y).norm())
        y = y_new
        if moved <= tol * max(float(y.norm()), 1.0):
            break
    return y.to(x.dtype)


def random_directions(d_sae: int, d_in: int, norm: float, *, dtype=torch.float32,
                      device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(d_sae, d_in) rows drawn uniformly on the sphere of radius ``norm``."""
    w = torch.randn(d_sae, d_in, dtype=torch.float32, generator=generator)
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12) * norm
    return w.to(dtype=dtype, device=device)


def activation_scale(sample: torch.Tensor, target: Optional[float] = None) -> float:
    """The scalar s with E||s x||^2 = target (default d_in), Scaling Monosemanticity.

    sample: (N, d_in). Returns a Python float (host sync; run once).
    """
    if sample.dim() != 2 or sample.shape[0] == 0:
        raise ValueError(f"sample must be a non-empty (N, d_in) tensor, got {tuple(sample.shape)}")
    target = float(sample.shape[1] if target is None else target)
    msq = float(sample.to(torch.float64).pow(2).sum(1).mean())
    if not msq > 0 or msq != msq or msq == float("inf"):
        raise ValueError(f"cannot normalise activations with mean squared norm {msq}")
    return (target / msq) ** 0.5
