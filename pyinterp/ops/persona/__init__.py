"""Persona-vector projections (Chen et al. 2025): ``persona_project``.

Projects the hidden states of many layers and tokens onto many directions at once and reduces
over the selected tokens, in one pass that reads each layer in place (pointer + strides: slices
of a model's residual stream are never copied or stacked).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from pyinterp.ops import _validate as check
from pyinterp.ops._dispatch import is_oracle, pick
from pyinterp.ops.persona.function import PERSONA_POOL, PERSONA_PROJECT, pool, project

REDUCES = ("mean", "sum", "last", "none")
MASK_DTYPES = check.FLOAT_DTYPES + (torch.bool, torch.uint8, torch.int8, torch.int16,
                                    torch.int32, torch.int64)


def _layers(hidden) -> list[torch.Tensor]:
    """Validate ``hidden`` and return its per-layer (B, T, D) views (never copies)."""
    if isinstance(hidden, torch.Tensor):
        check.tensor("hidden", hidden, ndim=4)
        layers = list(hidden.unbind(0))
        if not layers:
            raise ValueError(f"hidden must have at least one layer, got shape {tuple(hidden.shape)}")
    elif isinstance(hidden, (list, tuple)):
        if not hidden:
            raise ValueError("hidden must be a non-empty list of (B, T, D) tensors, got an empty list")
        layers = [check.tensor(f"hidden[{i}]", h, ndim=3) for i, h in enumerate(hidden)]
        first = layers[0]
        for i, h in enumerate(layers[1:], 1):
            check.shape(f"hidden[{i}]", h, first.shape, "the shape of hidden[0]")
            if h.dtype != first.dtype:
                raise TypeError(f"hidden[{i}] must have the dtype of hidden[0] ({first.dtype}), got {h.dtype}")
            if h.device != first.device:
                raise ValueError(f"hidden[{i}] must be on the device of hidden[0] ({first.device}), got {h.device}")
    else:
        raise TypeError("hidden must be a (L, B, T, D) tensor or a list of (B, T, D) tensors, "
                        f"got {type(hidden).__name__}")
    B, T, D = layers[0].shape
    if min(B, T, D) == 0:
        raise ValueError(f"hidden must have non-empty (B, T, D) dims, got {(len(layers), B, T, D)}")
    return layers


def persona_project(
    hidden: Union[torch.Tensor, Sequence[torch.Tensor]],
    vectors: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    reduce: str = "mean",
    normalize: bool = True,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Project hidden states onto persona directions and reduce over selected tokens.

    hidden: (L, B, T, D) tensor, or a list of L (B, T, D) tensors (any strides, e.g. views of a
        model's residual stream); vectors: (L, P, D) one set of P directions per layer, or (P, D)
        shared by every layer (any float dtype); mask: (B, T) bool / int / float or None (every
        token); a float mask weights the tokens.
    reduce: "mean" (masked mean over tokens), "sum" (masked sum), "last" (the last selected
        token of each row; the last token when mask is None), "none" (every token; unselected
        tokens give 0).
    normalize: project onto unit directions, a·v/|v| (the paper's projection); else a·v.

    Returns (L, B, P), or (L, B, T, P) for "none", in hidden's dtype (accumulated in float32,
    float64 for float64). A row whose mask selects nothing gives NaN for "mean" and "last".
    Differentiable in hidden and vectors.
    """
    layers = _layers(hidden)
    L = len(layers)
    B, T, D = layers[0].shape
    check.tensor("vectors", vectors)
    if vectors.dim() not in (2, 3):
        raise ValueError(f"vectors must be (L, P, D) or (P, D), got shape {tuple(vectors.shape)}")
    if vectors.shape[-1] != D:
        raise ValueError(f"vectors must have last dim D={D} (the hidden size), got shape {tuple(vectors.shape)}")
    if vectors.dim() == 3 and vectors.shape[0] != L:
        raise ValueError(f"vectors must have L={L} layers (one per hidden layer), got shape {tuple(vectors.shape)}")
    if vectors.shape[-2] == 0:
        raise ValueError(f"vectors must hold at least one direction, got shape {tuple(vectors.shape)}")
    if mask is not None:
        check.tensor("mask", mask, ndim=2, dtypes=MASK_DTYPES)
        check.shape("mask", mask, (B, T), "(batch, tokens) of hidden")
    check.same_device(hidden=layers[0], vectors=vectors, mask=mask)
    check.choice("reduce", reduce, REDUCES)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    name, impl = pick(PERSONA_PROJECT, layers[0], vectors, mask, backend=backend)
    if is_oracle(name):
        return impl.persona_project(layers, vectors, mask, reduce, normalize)
    return project(name, impl, layers, vectors, mask, reduce, normalize)


def _check_mask(mask, B: int, T: int) -> None:
    if mask is not None:
        check.tensor("mask", mask, ndim=2, dtypes=MASK_DTYPES)
        check.shape("mask", mask, (B, T), "(batch, tokens) of hidden")


def persona_pool(
    hidden: Union[torch.Tensor, Sequence[torch.Tensor]],
    mask: Optional[torch.Tensor] = None,
    reduce: str = "mean",
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """The masked token reduction of the hidden states: the fused pass of ``persona_project``
    without the projection (persona-vector extraction averages response activations with it).

    hidden: (L, B, T, D) tensor or list of L (B, T, D) tensors (read in place); mask: (B, T) or
    None; reduce: "mean" | "sum" | "last" (as in :func:`persona_project`).
    Returns (L, B, D) in hidden's dtype (accumulated in float32). Differentiable in hidden.
    """
    layers = _layers(hidden)
    B, T, D = layers[0].shape
    _check_mask(mask, B, T)
    check.same_device(hidden=layers[0], mask=mask)
    check.choice("reduce", reduce, ("mean", "sum", "last"))
    name, impl = pick(PERSONA_POOL, layers[0], mask, backend=backend)
    if is_oracle(name):
        return impl.persona_pool(layers, mask, reduce)
    return pool(name, impl, layers, mask, reduce)
