"""Queries and keys of every attention layer of a hooked model, one layer at a time.

Works with any model exposing TransformerLens-style hook points ``blocks.{i}.attn.hook_q`` /
``hook_k`` (shapes (B, T, H, d_head) and (B, T, H_kv, d_head), after rotary embeddings) and
``run_with_hooks``: pyinterp's own :class:`~pyinterp.models.Transformer`, the Hugging Face
adapter (:func:`pyinterp.models.from_hf`, which hooks q/k inside SDPA/flash attention, so the
model keeps its fast attention) and TransformerLens ``HookedTransformer`` (whose rotary models
expose the rotated q/k at ``hook_rot_q`` / ``hook_rot_k``).
"""
from __future__ import annotations

import math
from typing import Callable, List

import torch


def _is_transformer_lens(model) -> bool:
    return type(model).__module__.startswith("transformer_lens")


def n_layers_heads(model) -> tuple:
    cfg = model.cfg
    return int(cfg.n_layers), int(cfg.n_heads)


def hook_names(model, layer: int) -> tuple:
    """(q name, k name) of ``layer``: the post-rotary hooks."""
    if _is_transformer_lens(model) and getattr(model.cfg, "positional_embedding_type", "") == "rotary":
        return f"blocks.{layer}.attn.hook_rot_q", f"blocks.{layer}.attn.hook_rot_k"
    return f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"


def layer_scales(model) -> List[float]:
    """The factor each layer multiplies q . k by before the softmax."""
    L, _ = n_layers_heads(model)
    d_head = int(model.cfg.d_head)
    if _is_transformer_lens(model):
        cfg = model.cfg
        if getattr(cfg, "positional_embedding_type", "") == "alibi":
            raise NotImplementedError("head scores: ALiBi attention biases are not supported")
        cap = getattr(cfg, "attn_scores_soft_cap", -1.0)
        if cap is not None and cap > 0:
            raise NotImplementedError("head scores: attention score soft-capping is not supported")
        return [1.0 / float(block.attn.attn_scale) for block in model.blocks]
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "modules"):  # pyinterp.models.from_hf adapter
        scales = [float(getattr(m, "scaling", d_head ** -0.5)) for m in inner.modules()
                  if "_pyinterp_attn_hooks" in m.__dict__]
        if len(scales) == L:
            return scales
    return [1.0 / math.sqrt(d_head)] * L


def for_each_layer(model, tokens: torch.Tensor, fn: Callable[[int, torch.Tensor, torch.Tensor, float], None]):
    """Run ``model`` on ``tokens`` and call ``fn(layer, q, k, scale)`` as each layer's q and k
    are produced; q: (B, H, T, d_head), k: (B, H_kv, T, d_head) (views of the hook tensors).

    Only one layer's q and k are held at a time (no activation cache).
    """
    L, _ = n_layers_heads(model)
    scales = layer_scales(model)
    names = {}
    for layer in range(L):
        qn, kn = hook_names(model, layer)
        names[qn] = (layer, "q")
        names[kn] = (layer, "k")
    pending = {}

    def hook(x, hook):
        layer, which = names[hook.name]
        slot = pending.setdefault(layer, {})
        slot[which] = x.detach()
        if len(slot) == 2:
            del pending[layer]
            fn(layer, slot["q"].transpose(1, 2), slot["k"].transpose(1, 2), scales[layer])
        return None

    fwd_hooks = [(name, hook) for name in names]
    with torch.no_grad():
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=fwd_hooks)
    if pending:
        raise RuntimeError(f"hooks of layers {sorted(pending)} did not see both q and k")
