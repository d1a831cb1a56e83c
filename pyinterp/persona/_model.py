"""What the persona pipeline needs from a model, checked once with errors that say what is wrong.

Any pyinterp model works (:class:`pyinterp.models.Transformer`, ``from_hf`` / ``from_transformer_lens``
adapters): hook points named ``blocks.{i}.<hook>``, ``model.cfg.n_layers`` / ``d_model``,
``add_hook`` and ``generate``.
"""
from __future__ import annotations

from typing import Iterable, List, Optional

import torch

DEFAULT_HOOK = "hook_resid_post"


def n_layers(model) -> int:
    return int(model.cfg.n_layers)


def d_model(model) -> int:
    return int(model.cfg.d_model)


def device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def check_layer(model, layer, name: str = "layer") -> int:
    """A layer index in range (negative counts from the end), or ValueError naming it."""
    L = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"{name} must be an int, got {type(layer).__name__}")
    if not -L <= layer < L:
        raise ValueError(f"{name}={layer} is out of range: the model has {L} layers (0..{L - 1})")
    return layer % L


def check_layers(model, layers: Optional[Iterable[int]], name: str = "layers") -> List[int]:
    if layers is None:
        return list(range(n_layers(model)))
    out = [check_layer(model, l, f"{name}[{i}]") for i, l in enumerate(layers)]
    if not out:
        raise ValueError(f"{name} must name at least one layer")
    return out


def check_vector(model, v: torch.Tensor, name: str = "vector") -> torch.Tensor:
    """A direction (D,) (or (..., D)) whose D is the model's d_model."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {v.dtype}")
    D = d_model(model)
    if v.dim() == 0 or v.shape[-1] != D:
        raise ValueError(f"{name} must have last dim d_model={D} (the model's hidden size), "
                         f"got shape {tuple(v.shape)}")
    return v


def hook_name(layer: int, hook: str = DEFAULT_HOOK) -> str:
    return f"blocks.{layer}.{hook}"
