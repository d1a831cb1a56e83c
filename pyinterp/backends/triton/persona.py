"""Persona launchers on the Triton backend (kernels: ``triton_kernels/persona.py``); the
contract is in :mod:`pyinterp.ops.persona.function`.

Layers are read in place: a device table of L data pointers (int64, cast back to typed pointers
in the kernel) and a table of L x 3 element strides, so a list of non-contiguous views of a
model's residual stream costs one launch and no copy.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from pyinterp._common import acc_dtype, device_layer_table, triton_interpreted
from pyinterp.backends._shared import token_splits, tokens_output
from pyinterp.backends.triton.kernels import package  # noqa: F401  (registers the kernels)
from pyinterp.triton_kernels import persona as tk

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
       torch.float64: tl.float64}


def _target_programs(device: torch.device) -> int:
    if triton_interpreted():
        return 8  # small, so that tests on small shapes exercise the split path
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def persona_pool(layers: list[torch.Tensor], weights: Optional[torch.Tensor],
                 index: Optional[torch.Tensor], *, splits: Optional[int] = None) -> torch.Tensor:
    """One program per (layer x row, D block, token split); ``splits`` fixes the number of
    token splits (default: enough programs to fill the GPU); the gather for ``index``."""
    h0 = layers[0]
    L, (B, T, D) = len(layers), h0.shape
    acc = acc_dtype(h0.dtype)
    table, strides = device_layer_table(layers)
    block_d = min(128, triton.next_power_of_2(D))
    n_d = triton.cdiv(D, block_d)
    f64 = acc == torch.float64
    if index is not None:
        out = torch.empty(L, B, D, dtype=acc, device=h0.device)
        tk._gather_kernel[(L * B, n_d)](table, strides, index.contiguous(), out, B, D,
                                     DT=_TL[h0.dtype], ACC_F64=f64, BLOCK_D=block_d)
        return out
    block_t = 8 if triton_interpreted() else 16
    if splits is None:
        splits = max(1, min(triton.cdiv(T, block_t), _target_programs(h0.device) // (L * B * n_d)))
    splits, per_split = token_splits(T, splits, block_t)
    out = torch.empty(splits, L, B, D, dtype=acc, device=h0.device)
    tk._pool_kernel[(L * B, n_d, splits)](table, strides, weights, out, L, B, T, D, per_split,
                                       DT=_TL[h0.dtype], ACC_F64=f64, BLOCK_T=block_t,
                                       BLOCK_D=block_d)
    return out[0] if splits == 1 else out.sum(dim=0)


def persona_tokens(layers: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """Tiles of 16 tokens x up to 16 directions, reducing over D in chunks of 64 (32 for
    float64)."""
    w, table, strides, out = tokens_output(layers, w)
    h0 = layers[0]
    L, (B, T, D), P = len(layers), h0.shape, w.shape[1]
    block_p = min(16, triton.next_power_of_2(P))
    block_t = 16
    block_d = 32 if w.dtype == torch.float64 else 64
    grid = (L * B, triton.cdiv(T, block_t), triton.cdiv(P, block_p))
    tk._tokens_kernel[grid](table, strides, w, out, w.stride(0), B, T, D, P,
                         DT=_TL[h0.dtype], ACC_F64=w.dtype == torch.float64,
                         BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_P=block_p)
    return out
