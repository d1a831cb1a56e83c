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
from pyinterp.backends import registry
from pyinterp.ops._dispatch import Op
from pyinterp.ops._library import NAMESPACE, custom_op, launchers

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


def _pool_grad(grad, weights, index, shape, dtype, device, l):
    """d loss / d h[l] of hbar[l, b] = sum_t weights[b, t] h[l, b, t] (or h[l, b, index[b]])."""
    g = grad[l]  # (B, D)
    if index is None:
        return (weights[:, :, None].to(g.dtype) * g[:, None, :]).to(dtype)
    B, T, D = shape
    gh = torch.zeros(B, T, D, dtype=g.dtype, device=device)
    ok = index >= 0
    rows = torch.arange(B, device=device)
    gh[rows[ok], index[ok]] = g[ok]
    return gh.to(dtype)


def _tokens_grads(grad, w, layers, need_w: bool, need_layer):
    """d loss / d w and d loss / d h[l] of proj[l, b, t, p] = h[l, b, t] · w[l, p]."""
    gw = torch.zeros_like(w) if need_w else None
    grads = []
    for l, h in enumerate(layers):
        g = grad[l]  # (B, T, P)
        if gw is not None:
            gw[l] = torch.einsum("btp,btd->pd", g, h.to(g.dtype))
        grads.append(torch.matmul(g, w[l]).to(h.dtype) if need_layer(l) else None)
    return gw, grads


class Pool(torch.autograd.Function):
    """hbar[l, b] = sum_t weights[b, t] h[l, b, t] (or h[l, b, index[b]]); (L, B, D). The
    launcher set comes first here: the layers are the variadic tail."""

    @staticmethod
    def forward(ctx, launchers, weights, index, *layers):
        ctx.weights, ctx.index = weights, index
        ctx.meta = [(h.shape, h.dtype, h.device) for h in layers]
        return Pool.compute(launchers, weights, index, *layers)

    @staticmethod
    def compute(launchers, weights, index, *layers):
        with device_guard(layers[0]):
            return launchers.persona_pool(list(layers), weights, index)

    @staticmethod
    def backward(ctx, grad):
        grads = [_pool_grad(grad, ctx.weights, ctx.index, *meta, l)
                 if ctx.needs_input_grad[3 + l] else None for l, meta in enumerate(ctx.meta)]
        return (None, None, None, *grads)


class Tokens(torch.autograd.Function):
    """proj[l, b, t, p] = h[l, b, t] · w[l, p]; (L, B, T, P)."""

    @staticmethod
    def forward(ctx, launchers, w, *layers):
        ctx.save_for_backward(w, *layers)
        return Tokens.compute(launchers, w, *layers)

    @staticmethod
    def compute(launchers, w, *layers):
        with device_guard(layers[0]):
            return launchers.persona_tokens(list(layers), w)

    @staticmethod
    def backward(ctx, grad):
        w, *layers = ctx.saved_tensors
        gw, grads = _tokens_grads(grad, w, layers, ctx.needs_input_grad[1],
                                  lambda l: ctx.needs_input_grad[2 + l])
        return (None, gw, *grads)


# ---------------------------------------------------------------------------------------
# torch.library: the two kernels as custom ops with their autograd, and the public ops as
# composites of them (torch.ops.pyinterp.persona_project / persona_pool)


@custom_op("persona_hbar", lambda layers, weights, index, backend: layers[0].new_empty(
    len(layers), layers[0].shape[0], layers[0].shape[2], dtype=acc_dtype(layers[0].dtype)))
def persona_hbar_op(layers: list[torch.Tensor], weights: Optional[torch.Tensor],
                    index: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    """The pool of :class:`Pool`: hbar (L, B, D) in the accumulation dtype."""
    return Pool.compute(launchers(backend, "persona"), weights, index, *layers)


def _hbar_setup(ctx, inputs, output):
    layers, weights, index, _ = inputs
    ctx.weights, ctx.index = weights, index
    ctx.meta = [(h.shape, h.dtype, h.device) for h in layers]


def _hbar_backward(ctx, grad):
    grads = [_pool_grad(grad, ctx.weights, ctx.index, *meta, l) for l, meta in enumerate(ctx.meta)]
    return grads, None, None, None


persona_hbar_op.register_autograd(_hbar_backward, setup_context=_hbar_setup)


@custom_op("persona_token_proj", lambda layers, w, backend: w.new_empty(
    len(layers), layers[0].shape[0], layers[0].shape[1], w.shape[1]))
def persona_token_proj_op(layers: list[torch.Tensor], w: torch.Tensor, backend: str
                          ) -> torch.Tensor:
    """The projections of :class:`Tokens`: (L, B, T, P) in w's dtype."""
    return Tokens.compute(launchers(backend, "persona"), w, *layers)


def _token_proj_setup(ctx, inputs, output):
    layers, w, _ = inputs
    ctx.save_for_backward(w, *layers)


def _token_proj_backward(ctx, grad):
    w, *layers = ctx.saved_tensors
    gw, grads = _tokens_grads(grad, w, layers, True, lambda l: True)
    return grads, gw, None


persona_token_proj_op.register_autograd(_token_proj_backward, setup_context=_token_proj_setup)


def _pool(backend, launcher_set, weights, index, layers):
    if launcher_set is None or torch.compiler.is_compiling():
        return persona_hbar_op(list(layers), weights, index, backend)
    return Pool.apply(launcher_set, weights, index, *layers)


def _tokens(backend, launcher_set, w, layers):
    if launcher_set is None or torch.compiler.is_compiling():
        return persona_token_proj_op(list(layers), w, backend)
    return Tokens.apply(launcher_set, w, *layers)


def project(backend: str, launcher_set, layers: list[torch.Tensor], vectors: torch.Tensor,
            mask: Optional[torch.Tensor], reduce: str, normalize: bool) -> torch.Tensor:
    """persona_project on kernel backend ``backend`` (validated arguments); ``launcher_set``
    None runs through the custom ops."""
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
        out = _tokens(backend, launcher_set, w, layers)
        if mask is not None:
            out = out * (mask != 0).to(cd)[None, :, :, None]
        return out.to(dtype)
    if reduce == "last":
        weights, index = None, last_index(mask, B, T, device)
    else:
        weights, index = token_weights(mask, reduce, B, T, cd, device), None
    hbar = _pool(backend, launcher_set, weights, index, layers)  # (L, B, D)
    return torch.bmm(hbar, w.transpose(1, 2)).to(dtype)


def pool(backend: str, launcher_set, layers: list[torch.Tensor], mask: Optional[torch.Tensor],
         reduce: str) -> torch.Tensor:
    """persona_pool on kernel backend ``backend`` (validated arguments): (L, B, D)."""
    B, T, D = layers[0].shape
    dtype, device = layers[0].dtype, layers[0].device
    if reduce == "last":
        weights, index = None, last_index(mask, B, T, device)
    else:
        weights, index = token_weights(mask, reduce, B, T, acc_dtype(dtype), device), None
    return _pool(backend, launcher_set, weights, index, layers).to(dtype)


torch.library.define(f"{NAMESPACE}::persona_project", "(Tensor[] layers, Tensor vectors, "
                     "Tensor? mask, str reduce, bool normalize, str backend) -> Tensor")
torch.library.define(f"{NAMESPACE}::persona_pool",
                     "(Tensor[] layers, Tensor? mask, str reduce, str backend) -> Tensor")


@torch.library.impl(f"{NAMESPACE}::persona_project", "CompositeImplicitAutograd")
def _persona_project_composite(layers, vectors, mask, reduce, normalize, backend):
    if registry.get(backend).oracle:
        oracle = launchers(backend, "persona")
        return oracle.persona_project(list(layers), vectors, mask, reduce, normalize)
    return project(backend, None, list(layers), vectors, mask, reduce, normalize)


@torch.library.impl(f"{NAMESPACE}::persona_pool", "CompositeImplicitAutograd")
def _persona_pool_composite(layers, mask, reduce, backend):
    if registry.get(backend).oracle:
        return launchers(backend, "persona").persona_pool(list(layers), mask, reduce)
    return pool(backend, None, list(layers), mask, reduce)


PERSONA_PROJECT = Op("persona_project", "persona", PROJECT_LAUNCHERS)
PERSONA_POOL = Op("persona_pool", "persona", POOL_LAUNCHERS)
