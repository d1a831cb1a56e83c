"""JumpReLU threshold initialisation from data (docs/decisions/sae-jumprelu-threshold-init.md).

A constant initial threshold (SAELens: 0.01) leaves a freshly initialised JumpReLU dictionary
dense: about half its latents fire on every row until the L0 penalty has pushed the
thresholds up, and a sparse code of half the latents costs more than a dense one. Setting each
threshold at the (1 - l0 / d_sae) quantile of its own pre-activations over a data sample
starts training at the chosen L0 with every latent firing equally often (the spirit of
Anthropic's and Gemma Scope 2's data-dependent encoder initialisation).
"""
from __future__ import annotations

from typing import Optional

import torch

COLS = 4096  # pre-activation columns per chunk (the sample is (N, COLS) at a time)


@torch.no_grad()
def init_thresholds_to_l0(threshold: torch.Tensor, xn: torch.Tensor, W_enc: torch.Tensor,
                          b_enc: torch.Tensor, b_center: Optional[torch.Tensor],
                          l0: float) -> None:
    """Set ``threshold`` (d_sae,) in place so that each latent fires (pre > threshold) on a
    fraction l0 / d_sae of the rows of ``xn`` (N, d_in, normalised); thresholds stay >= 0."""
    n, d_sae = xn.shape[0], W_enc.shape[1]
    if n == 0:
        raise ValueError("cannot initialise JumpReLU thresholds from an empty sample")
    frac = min(max(float(l0) / d_sae, 0.0), 1.0)
    rank = min(n, max(1, round(n * (1.0 - frac))))  # kthvalue's k: rows at or below it stay off
    x = xn.float()
    if b_center is not None:
        x = x - b_center.float()
    for c0 in range(0, d_sae, COLS):
        pre = torch.addmm(b_enc[c0:c0 + COLS].float(), x, W_enc[:, c0:c0 + COLS].float())
        q = torch.kthvalue(pre, rank, dim=0).values
        threshold[c0:c0 + COLS] = q.clamp_min(0).to(threshold.dtype)
