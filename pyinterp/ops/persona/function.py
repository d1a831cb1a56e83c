"""The autograd Functions of ``persona_project`` / ``persona_pool``: pool, then project.

By linearity, the masked mean (or sum) of the per-token projections equals the projection of
the masked mean hidden state: sum_t w_t (h_t · u_p) = (sum_t w_t h_t) · u_p. So for
``reduce`` in {"mean", "sum", "last"} the kernels make ONE pass over the hidden states that
pools each (layer, row) into hbar (L, B, D) in float32 (float64 for float64 input), reading
each layer through its own pointer and strides (no copy, no stacking), and the P projections
are one small batched matmul on hbar. "last" reads only one token per row. For "none" a kernel
computes the P dot products of every token (L, B, T, P).

A backend supplies the launcher set (``pyinterp/backends/<name>/persona.py``):

- ``persona_pool(layers, weights, index) -> hbar (L, B, D)`` in the accumulation dtype: layers
  L x (B, T, D) views (any strides); weights (B, T) contiguous accumulation-dtype token
  weights, or index (B,) int64 (one token per row, -1 = none: NaN)
- ``persona_tokens(layers, w) -> (L, B, T, P)`` in w's dtype: w (L, P, D) in the accumulation
  dtype, rows of each layer contiguous (a stride-0 layer dim for shared directions)

Backward (training-time use) is written in torch, here, for every backend: it never needs the
hidden states for the pool (d hbar / d h is the token weight), and reads them once for the
vectors' gradient under "none". See docs/decisions/persona-projection.md.
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp._common import acc_dtype, device_guard

POOL_LAUNCHERS = ("persona_pool",)
PROJECT_LAUNCHERS = ("persona_pool", "persona_tokens")


def last_index(mask: Optional[torch.Tensor], B: int, T: int, device) -> torch.Tensor:
    """(B,) int64: the last token with mask != 0 per row, -1 where a row selects nothing."""
    if mask is None:
        return torch.full((B,), T - 1, dtype=torch.int64, device=device)
    pos = torch.arange(T, device=device).expand(B, T)
    return torch.where(mask != 0, pos, pos.new_full((), -1)).amax(dim=1)


def token_weights(mask: Optional[torch.Tensor], reduce: str, B: int, T: int, dtype, device):
    """(B, T) contiguous weights whose weighted sum over tokens is the requested reduction.

    "mean": mask / mask.sum(row) (a row that selects nothing gets NaN weights: 0/0);
    "sum": the mask itself. A float mask acts as per-token weights.
    """
    if mask is None:
        fill = 1.0 / T if reduce == "mean" else 1.0
        return torch.full((B, T), fill, dtype=dtype, device=device)
    w = mask.to(dtype)
    if reduce == "mean":
        w = w / w.sum(dim=1, keepdim=True)
    return w.contiguous()


class Pool(torch.autograd.Function):
    """hbar[l, b] = sum_t weights[b, t] h[l, b, t] (or h[l, b, index[b]]); (L, B, D)."""

    @staticmethod
    def forward(launchers, weights, index, *layers):
        with device_guard(layers[0]):
            return launchers.persona_pool(list(layers), weights, index)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, weights, index, *layers = inputs
        ctx.weights, ctx.index = weights, index
        ctx.meta = [(h.shape, h.dtype, h.device) for h in layers]

    @staticmethod
    def backward(ctx, grad):
        grads = []
        for l, (shape, dtype, device) in enumerate(ctx.meta):
            if not ctx.needs_input_grad[3 + l]:
                grads.append(None)
                continue
            g = grad[l]  # (B, D)
            if ctx.index is None:
                gh = ctx.weights[:, :, None].to(g.dtype) * g[:, None, :]
            else:
                B, T, D = shape
                gh = torch.zeros(B, T, D, dtype=g.dtype, device=device)
                ok = ctx.index >= 0
                rows = torch.arange(B, device=device)
                gh[rows[ok], ctx.index[ok]] = g[ok]
            grads.append(gh.to(dtype))
        return (None, None, None, *grads)


class Tokens(torch.autograd.Function):
    """proj[l, b, t, p] = h[l, b, t] · w[l, p]; (L, B, T, P)."""

    @staticmethod
    def forward(launchers, w, *layers):
        with device_guard(layers[0]):
            return launchers.persona_tokens(list(layers), w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, w, *layers = inputs
        ctx.save_for_backward(w, *layers)

    @staticmethod
    def backward(ctx, grad):
        w, *layers = ctx.saved_tensors
        gw = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        grads = []
        for l, h in enumerate(layers):
            g = grad[l]  # (B, T, P)
            if gw is not None:
                gw[l] = torch.einsum("btp,btd->pd", g, h.to(g.dtype))
            grads.append(torch.matmul(g, w[l]).to(h.dtype) if ctx.needs_input_grad[2 + l] else None)
        return (None, gw, *grads)


def project(launchers, layers: list[torch.Tensor], vectors: torch.Tensor,
            mask: Optional[torch.Tensor], reduce: str, normalize: bool) -> torch.Tensor:
    """persona_project on a kernel backend's launchers (validated arguments)."""
    B, T, D = layers[0].shape
    L = len(layers)
    dtype, device = layers[0].dtype, layers[0].device
    cd = acc_dtype(dtype)
    w = vectors.to(cd)
    if normalize:
        w = w / w.norm(dim=-1, keepdim=True)
    if w.dim() == 2:
        w = w.unsqueeze(0).expand(L, *w.shape)  # shared directions: a stride-0 view
    if reduce == "none":
        out = Tokens.apply(launchers, w, *layers)
        if mask is not None:
            out = out * (mask != 0).to(cd)[None, :, :, None]
        return out.to(dtype)
    if reduce == "last":
        weights, index = None, last_index(mask, B, T, device)
    else:
        weights, index = token_weights(mask, reduce, B, T, cd, device), None
    hbar = Pool.apply(launchers, weights, index, *layers)  # (L, B, D)
    return torch.bmm(hbar, w.transpose(1, 2)).to(dtype)


def pool(launchers, layers: list[torch.Tensor], mask: Optional[torch.Tensor], reduce: str
         ) -> torch.Tensor:
    """persona_pool on a kernel backend's launchers (validated arguments): (L, B, D)."""
    B, T, D = layers[0].shape
    dtype, device = layers[0].dtype, layers[0].device
    if reduce == "last":
        weights, index = None, last_index(mask, B, T, device)
    else:
        weights, index = token_weights(mask, reduce, B, T, acc_dtype(dtype), device), None
    return Pool.apply(launchers, weights, index, *layers).to(dtype)
