"""Multi-output sparse decode, pure-torch reference (the oracle of the ``multi_decode`` family).

One sparse code ``(values, indices)``, each (N, k), with global latent indices in
[0, S * d_src), decodes through a stack of decoders W_dec (P, d_src, d_out) into G outputs:

    out[g, n] = b_dec[g] + sum over entries j of row n with
                    p = decoder_map[s, g] >= 0 (s = indices[n, j] // d_src) and
                    lo[g] <= indices[n, j] < hi[g]
                of values[n, j] * W_dec[p, indices[n, j] % d_src]

Entries that fail the test contribute nothing (not even 0 * W); entries that pass always
contribute values * W (so 0 * inf = nan, as in IEEE arithmetic). Computes in float32 (float64
for float64) and returns W_dec's dtype. Differentiable through autograd in values, W_dec,
b_dec. Memory: one (nnz,) selection per output, never an (N, d_sae) code or an (N, k, d) tensor.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def multi_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor,
                 b_dec: Optional[torch.Tensor], decoder_map: torch.Tensor, lo: torch.Tensor,
                 hi: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
    """values, indices: (N, k); W_dec: (P, d_src, d_out); b_dec: (G, d_out) or None;
    decoder_map: (S, G) int64 (-1: no decoder); lo, hi: (G,) int64. Returns (G, N, d_out).

    ``deterministic`` is accepted for API parity (torch's CPU embedding_bag is deterministic).
    """
    cd = compute_dtype(W_dec.dtype)
    P, d_src, d_out = W_dec.shape
    n, k = indices.shape
    G = decoder_map.shape[1]
    dev = W_dec.device
    flat_W = W_dec.reshape(P * d_src, d_out).to(cd)
    dmap = decoder_map.to(dev)
    src = torch.div(indices, d_src, rounding_mode="floor").clamp(0, dmap.shape[0] - 1)
    local = indices - src * d_src
    flat_v = values.reshape(-1).to(cd)
    outs = []
    for g in range(G):
        slab = dmap[:, g][src]                                       # (N, k)
        ok = (slab >= 0) & (indices >= lo[g]) & (indices < hi[g])
        keep = ok.reshape(-1)
        rows = (slab * d_src + local).reshape(-1)[keep]
        weights = flat_v[keep]
        offsets = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        offsets[1:] = torch.cumsum(ok.sum(1), 0)
        out = F.embedding_bag(rows, flat_W, offsets, mode="sum", per_sample_weights=weights,
                              include_last_offset=True)
        if b_dec is not None:
            out = out + b_dec[g].to(cd)
        outs.append(out)
    return torch.stack(outs).to(W_dec.dtype)
