"""Persona launchers on the C++ CPU backend (``csrc/cpu/persona.cpp``); the contract and the
pool-then-project design are in :mod:`pyinterp.ops.persona.function`.

Layers are passed as (pointer, strides) per layer, never copied.
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp._common import acc_dtype
from pyinterp.backends.cpu import dtype_code, ext, num_threads


def _layer_table(layers: list[torch.Tensor]) -> tuple[list[int], list[int]]:
    """Data pointers (L,) and element strides (L*3,) of per-layer (B, T, D) views."""
    return [int(h.data_ptr()) for h in layers], [int(s) for h in layers for s in h.stride()]


def persona_pool(layers: list[torch.Tensor], weights: Optional[torch.Tensor],
                 index: Optional[torch.Tensor]) -> torch.Tensor:
    """layers: L x (B, T, D); weights: (B, T) contiguous compute-dtype, or index: (B,) int64.
    Returns hbar (L, B, D) in the compute dtype."""
    B, T, D = layers[0].shape
    h0 = layers[0]
    out = torch.empty(len(layers), B, D, dtype=acc_dtype(h0.dtype))
    ptrs, strides = _layer_table(layers)
    index = None if index is None else index.contiguous()
    ext().persona_pool(ptrs, strides, B, T, D, 0 if weights is None else weights.data_ptr(),
                       0 if index is None else index.data_ptr(), out.data_ptr(), dtype_code(h0),
                       num_threads())
    return out


def persona_tokens(layers: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """layers: L x (B, T, D); w: (L, P, D) compute dtype (rows of each layer contiguous; a
    stride-0 layer dim for shared directions). Returns (L, B, T, P) in the compute dtype."""
    B, T, D = layers[0].shape
    P = w.shape[1]
    if not w[0].is_contiguous():
        w = w.contiguous()
    out = torch.empty(len(layers), B, T, P, dtype=w.dtype)
    ptrs, strides = _layer_table(layers)
    ext().persona_tokens(ptrs, strides, B, T, D, w.data_ptr(), w.stride(0), P, out.data_ptr(),
                         dtype_code(layers[0]), num_threads())
    return out
