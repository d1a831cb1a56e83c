"""Steering and ablation of a persona direction through hooks (Chen et al. 2025).

    with steer(model, vector, layer=8, alpha=2.0, positions="response"):
        model.generate(prompts, max_new_tokens=40)
    with ablate(model, vector, layers=[8]):
        ...

Steering adds ``alpha * v`` to ``blocks.{layer}.<hook>`` (the raw persona vector, as in the
paper; ``unit=True`` adds alpha times the unit direction). Ablation projects the unit direction
out: h <- h - (h.u) u. ``positions``: "all" tokens, the "prompt" chunk (the first forward after
the context opens) or the "response" chunks (every later forward of KV-cached generation); a
(B, T) ``mask`` selects tokens of a full teacher-forced forward instead (training on responses).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch

from pyinterp.persona._model import (
    DEFAULT_HOOK,
    check_layer,
    check_layers,
    check_vector,
    hook_name,
)

POSITIONS = ("all", "prompt", "response")


class _Chunks:
    """Counts forward chunks as seen by the first hooked layer (0 = prompt)."""

    def __init__(self):
        self.index = -1
        self.seen: set = set()

    def visit(self, key) -> int:
        if key in self.seen or not self.seen:
            self.seen = set()
            self.index += 1
        self.seen.add(key)
        return self.index


def _positions_ok(positions: str, chunk: int) -> bool:
    return positions == "all" or (positions == "prompt") == (chunk == 0)


def _check_positions(positions, mask):
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 2):
        raise ValueError("mask must be a (B, T) tensor selecting the steered tokens")


@contextlib.contextmanager
def steer(model, vector: torch.Tensor, layer: int, alpha: float, *, positions: str = "all",
          mask: Optional[torch.Tensor] = None, unit: bool = False,
          hook: str = DEFAULT_HOOK) -> Iterator[None]:
    """Add ``alpha * vector`` (D,) at ``blocks.{layer}.<hook>`` while the context is open
    (differentiable: usable during training, e.g. preventative steering)."""
    layer = check_layer(model, layer)
    v = check_vector(model, vector, "vector")
    if v.dim() != 1:
        raise ValueError(f"vector must be one direction (D,), got shape {tuple(v.shape)}")
    _check_positions(positions, mask)
    v = v.detach()
    if unit:
        v = v / v.norm()
    chunks = _Chunks()

    def fn(x: torch.Tensor, hook_point) -> Optional[torch.Tensor]:
        chunk = chunks.visit(0)
        add = (alpha * v).to(device=x.device, dtype=x.dtype)
        if mask is not None:
            m = mask.to(device=x.device, dtype=x.dtype)
            if m.shape != x.shape[:2]:
                raise ValueError(f"mask must have shape {tuple(x.shape[:2])} (batch, tokens of the "
                                 f"forward pass), got {tuple(m.shape)}")
            return x + m[..., None] * add
        if not _positions_ok(positions, chunk):
            return None
        return x + add

    with model.hooks([(hook_name(layer, hook), fn)]):
        yield


@contextlib.contextmanager
def ablate(model, vector: torch.Tensor, layers: Optional[Sequence[int]] = None, *,
           positions: str = "all", hook: str = DEFAULT_HOOK) -> Iterator[None]:
    """Project the unit direction of ``vector`` (D,) out of ``blocks.{l}.<hook>`` for every
    layer in ``layers`` (default all)."""
    layers = check_layers(model, layers)
    v = check_vector(model, vector, "vector")
    if v.dim() != 1:
        raise ValueError(f"vector must be one direction (D,), got shape {tuple(v.shape)}")
    _check_positions(positions, None)
    u = (v / v.norm()).detach()
    chunks = _Chunks()

    def make(k):
        def fn(x: torch.Tensor, hook_point) -> Optional[torch.Tensor]:
            if not _positions_ok(positions, chunks.visit(k)):
                return None
            uu = u.to(device=x.device, dtype=x.dtype)
            return x - (x @ uu)[..., None] * uu
        return fn

    with model.hooks([(hook_name(l, hook), make(k)) for k, l in enumerate(layers)]):
        yield
