"""Dead-latent resampling for ReLU dictionaries (Towards Monosemanticity, "Neuron resampling")."""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp.sae.modules import SparseAutoencoder


@torch.no_grad()
def resample_dead(sae: SparseAutoencoder, dead_mask: torch.Tensor, x: torch.Tensor,
                  optimizer: Optional[torch.optim.Optimizer] = None, *,
                  generator: Optional[torch.Generator] = None, encoder_scale: float = 0.2) -> int:
    """Re-initialise dead latents towards inputs the dictionary reconstructs badly.

    For each dead latent: draw an input row with probability proportional to its squared
    reconstruction loss, set the decoder row to that (centred, normalised) input, the
    encoder column to it times ``encoder_scale`` times the mean encoder norm of the alive
    latents, the encoder bias to 0, and reset Adam's moments for those entries.
    dead_mask: (d_sae,) bool; x: (N, d_in) raw activations. Returns how many were resampled
    (one host sync: this runs every few thousand steps).
    """
    dead = dead_mask.nonzero().flatten()
    n = int(dead.numel())
    if n == 0:
        return 0
    xn, _ = sae._normalize_in(sae._flatten(x))
    values, indices = sae._encode(xn)
    err = (sae._decode(values, indices) - xn).float().pow(2).sum(-1)
    probs = err.pow(2).cpu()
    if not float(probs.sum()) > 0:
        probs = torch.ones_like(probs)
    rows = torch.multinomial(probs, n, replacement=True, generator=generator).to(x.device)
    v = (xn[rows] - sae.b_dec).float()
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead_mask
    enc_norm = sae.W_enc.norm(dim=0)[alive].mean() if bool(alive.any()) else torch.tensor(1.0)
    sae.W_dec[dead] = v.to(sae.W_dec.dtype)
    sae.W_enc[:, dead] = (v * enc_norm * encoder_scale).T.to(sae.W_enc.dtype)
    sae.b_enc[dead] = 0
    if optimizer is not None:
        for p, sl in ((sae.W_dec, (dead,)), (sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,))):
            st = optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    st[key][sl] = 0
    return n
