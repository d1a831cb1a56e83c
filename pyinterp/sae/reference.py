"""A pure-torch TopK SAE with the same maths as :class:`pyinterp.sae.TopKSAE`, written the
obvious way: dense (N, d_sae) pre-activations, ``torch.topk``, a dense code scattered into an
(N, d_sae) matrix and a dense decode. It is the baseline of the training-step benchmark
(pyinterp/bench/cases_sae_train.py) and an oracle for the module tests."""
from __future__ import annotations

import torch
from torch import nn


class DenseTopKSAE(nn.Module):
    """x: (N, d_in) -> x_hat (N, d_in); W_enc (d_in, d_sae), W_dec (d_sae, d_in)."""

    def __init__(self, d_in: int, d_sae: int, k: int, dtype=torch.float32, device=None):
        super().__init__()
        self.k = k
        kw = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        nn.init.normal_(self.W_dec)
        with torch.no_grad():
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True) * 10)
            self.W_enc.copy_(self.W_dec.T)

    @classmethod
    def like(cls, sae) -> "DenseTopKSAE":
        """A copy of a pyinterp TopKSAE's parameters (same maths, dense implementation)."""
        ref = cls(sae.d_in, sae.d_sae, int(sae.cfg.k), dtype=sae.W_enc.dtype, device=sae.W_enc.device)
        with torch.no_grad():
            for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(ref, n).copy_(getattr(sae, n))
        return ref

    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        values, indices = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_dense(x) @ self.W_dec + self.b_dec

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over rows of ||x - x_hat||^2 (TopKSAE.loss's mse term, no AuxK)."""
        return (self(x) - x).pow(2).sum(-1).mean()
