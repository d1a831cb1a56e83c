"""The module wrappers of :mod:`pyinterp.nn` (thin: parameters, shapes, then one op call)."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from pyinterp import ops


class SoLU(nn.Module):
    """x * softmax(x) over the last dim (Elhage et al. 2022)."""

    def __init__(self, *, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.solu(x, backend=self.backend)


class SoLULN(nn.Module):
    """LayerNorm(x * softmax(x)) over the last dim, fused; the parameters of
    ``nn.LayerNorm(d, eps, elementwise_affine)``. ``forward(x, return_pre_ln=True)`` also
    returns the neurons before the LN (what interpretability reads: TransformerLens's hook_mid).
    """

    def __init__(self, d: int, eps: float = 1e-5, elementwise_affine: bool = True, *,
                 device=None, dtype=None, backend: Optional[str] = None):
        super().__init__()
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        self.d, self.eps, self.backend = d, float(eps), backend
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, return_pre_ln: bool = False):
        if x.shape[-1:] != (self.d,):
            raise ValueError(f"x must have shape (..., {self.d}), got {tuple(x.shape)}")
        return ops.solu_ln(x, self.weight, self.bias, self.eps, return_pre_ln, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class SparseAutoencoder(nn.Module):
    """x (..., d_in) -> reconstruction (..., d_in) through a sparse code of d_sae latents.

    ``k``: top-k code (k active latents per row); ``k=None``: ReLU code, or with
    ``jumprelu=True`` JumpReLU against a per-latent ``threshold`` buffer (zeros until set, e.g.
    from a trained dictionary; it receives no gradient). Parameters follow the
    SAELens layout (W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_in), b_dec); the encoder
    subtracts b_dec first. ``forward(x, return_code=True)`` returns ``(x_hat, (values,
    indices))``; :meth:`encode` / :meth:`decode` expose the two halves. Decoder rows start as
    random directions of norm ``init_norm`` and W_enc as W_dec transposed.
    """

    def __init__(self, d_in: int, d_sae: int, k: Optional[int] = None, *, jumprelu: bool = False,
                 init_norm: float = 0.1, device=None, dtype=None, seed: Optional[int] = None,
                 backend: Optional[str] = None):
        super().__init__()
        for name, v in (("d_in", d_in), ("d_sae", d_sae)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae):
            raise ValueError(f"k must be an int in [1, d_sae={d_sae}] or None, got {k!r}")
        if jumprelu and k is not None:
            raise ValueError("jumprelu=True is a threshold code: pass k=None")
        from pyinterp.sae.init import random_directions

        self.d_in, self.d_sae, self.k, self.backend = d_in, d_sae, k, backend
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w = random_directions(d_sae, d_in, init_norm, generator=gen, dtype=dtype or torch.float32,
                              device=device)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device, dtype=w.dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device, dtype=w.dtype))
        if jumprelu:
            self.register_buffer("threshold", torch.zeros(d_sae, device=device, dtype=w.dtype))
        else:
            self.threshold = None

    def encode(self, x: torch.Tensor):
        """(..., d_in) -> (values, indices), each (..., width): k for top-k, else the batch's
        largest active count (padding: value 0, index 0)."""
        if self.k is not None:
            return ops.topk_encode(x, self.W_enc, self.b_enc, self.b_dec, self.k, backend=self.backend)
        thr: Union[float, torch.Tensor] = 0.0 if self.threshold is None else self.threshold
        return ops.threshold_encode(x, self.W_enc, self.b_enc, self.b_dec, thr, backend=self.backend)

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(values, indices) (..., width) -> (..., d_in)."""
        return ops.sparse_decode(values, indices, self.W_dec, self.b_dec, backend=self.backend)

    def forward(self, x: torch.Tensor, return_code: bool = False):
        values, indices = self.encode(x)
        # the encoder's own indices are in range: skip the check (a device sync on GPU)
        x_hat = ops.sparse_decode(values, indices, self.W_dec, self.b_dec, check_indices=False,
                                  backend=self.backend)
        return (x_hat, (values, indices)) if return_code else x_hat

    def extra_repr(self) -> str:
        code = f"k={self.k}" if self.k is not None else ("jumprelu" if self.threshold is not None else "relu")
        return f"d_in={self.d_in}, d_sae={self.d_sae}, {code}"
