"""Frozen attention patterns, stored or recomputed block by block.

The local replacement model multiplies by each layer's pattern P (H, T, T) and its transpose.
Stored patterns cost H x T² floats per layer. For pyinterp's own Transformer, whose scores are
exactly ``q·k / sqrt(d_head)`` under a causal mask, :class:`RecomputedPatterns` keeps only q, k
(after rotary) and each query's log-sum-exp, and rebuilds P in query blocks when it is used:
memory linear in T (the flash-attention trade: the products cost one more q·k per use).

Both give, per layer: ``rows(queries, Tp)`` (B, H, Tp) pattern rows of single queries,
``apply(v)`` = P @ v and ``apply_T(g, Tp)`` = P[:, :Tp, :Tp]ᵀ @ g.
"""
from __future__ import annotations

import math
from typing import List

import torch

_BLOCK_FLOATS = 1 << 20  # scores per block: H x block x T' floats (4 MiB in float32)


class StoredPatterns:
    def __init__(self, patterns: List[torch.Tensor]):
        self.P = patterns  # per layer (H, T, T)

    def rows(self, layer: int, queries: torch.Tensor, Tp: int) -> torch.Tensor:
        return self.P[layer][:, queries, :Tp].permute(1, 0, 2)

    def apply(self, layer: int, v: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.P[layer], v)

    def apply_T(self, layer: int, g: torch.Tensor, Tp: int) -> torch.Tensor:
        return torch.bmm(self.P[layer][:, :Tp, :Tp].transpose(1, 2), g)

    def dense(self, layer: int) -> torch.Tensor:
        return self.P[layer]


class RecomputedPatterns:
    """Causal softmax(q kᵀ · scale) rebuilt from q, k (H, T, d_head) and the log-sum-exp."""

    def __init__(self, qs: List[torch.Tensor], ks: List[torch.Tensor], scale: float):
        self.q, self.k, self.scale = qs, ks, scale
        self.lse = [self._lse(q, k) for q, k in zip(qs, ks)]

    def _block(self, H: int, Tp: int) -> int:
        return max(1, min(Tp, _BLOCK_FLOATS // max(1, H * Tp)))

    def _scores(self, q: torch.Tensor, k: torch.Tensor, i0: int, i1: int, Tp: int) -> torch.Tensor:
        """Masked scores of queries [i0, i1) against keys [0, Tp): (H, i1 - i0, Tp)."""
        s = torch.einsum("hqd,hkd->hqk", q[:, i0:i1], k[:, :Tp]) * self.scale
        qi = torch.arange(i0, i1, device=s.device)[:, None]
        ki = torch.arange(Tp, device=s.device)[None, :]
        return s.masked_fill(ki > qi, float("-inf"))

    def _lse(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        H, T, _ = q.shape
        out = torch.empty(H, T, dtype=q.dtype, device=q.device)
        b = self._block(H, T)
        for i0 in range(0, T, b):
            i1 = min(T, i0 + b)
            out[:, i0:i1] = torch.logsumexp(self._scores(q, k, i0, i1, i1), -1)
        return out

    def _probs(self, layer: int, i0: int, i1: int, Tp: int) -> torch.Tensor:
        s = self._scores(self.q[layer], self.k[layer], i0, i1, Tp)
        return torch.exp(s - self.lse[layer][:, i0:i1, None])

    def rows(self, layer: int, queries: torch.Tensor, Tp: int) -> torch.Tensor:
        q, k = self.q[layer], self.k[layer]
        s = torch.einsum("hbd,hkd->bhk", q[:, queries], k[:, :Tp]) * self.scale
        s = s.masked_fill(torch.arange(Tp, device=s.device)[None, None, :] > queries[:, None, None], float("-inf"))
        return torch.exp(s - self.lse[layer][:, queries].T[:, :, None])

    def apply(self, layer: int, v: torch.Tensor) -> torch.Tensor:
        H, T, _ = v.shape
        out = torch.empty_like(v)
        b = self._block(H, T)
        for i0 in range(0, T, b):
            i1 = min(T, i0 + b)
            out[:, i0:i1] = torch.bmm(self._probs(layer, i0, i1, i1), v[:, :i1])
        return out

    def apply_T(self, layer: int, g: torch.Tensor, Tp: int) -> torch.Tensor:
        H = g.shape[0]
        out = torch.zeros_like(g)
        b = self._block(H, Tp)
        for i0 in range(0, Tp, b):
            i1 = min(Tp, i0 + b)
            out[:, :i1] += torch.bmm(self._probs(layer, i0, i1, i1).transpose(1, 2), g[:, i0:i1])
        return out

    def dense(self, layer: int) -> torch.Tensor:
        T = self.q[layer].shape[1]
        return self._probs(layer, 0, T, T)


def recompute_scale(model):
    """The score scale of models whose patterns can be recomputed from q and k, else None."""
    from pyinterp.models.transformer import Transformer

    if isinstance(model, Transformer):
        return 1.0 / math.sqrt(model.cfg.d_head)
    return None
