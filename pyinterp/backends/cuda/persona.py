"""Persona launchers on the CUDA backend (``csrc/cuda/persona.cu``); the contract is in
:mod:`pyinterp.ops.persona.function`.

Layers are passed as device tables of data pointers and element strides (one small asynchronous
host-to-device copy of 4*L int64 values per call), so views of a model's residual stream are read
in place.
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp._common import acc_dtype as _acc
from pyinterp._common import device_layer_table
from pyinterp.backends._shared import cdiv, token_splits, tokens_output
from pyinterp.backends.cuda import runtime

_FILE = "persona.cu"
_POOL_THREADS = 256
_TOKENS_WARPS = 8


def persona_pool(layers: list[torch.Tensor], weights: Optional[torch.Tensor],
                 index: Optional[torch.Tensor]) -> torch.Tensor:
    """One block per (layer x row, 256 columns, token split); the gather for ``index``."""
    h0 = layers[0]
    L, (B, T, D) = len(layers), h0.shape
    acc = _acc(h0.dtype)
    table, strides = device_layer_table(layers)
    n_d = cdiv(D, _POOL_THREADS)
    if index is not None:
        out = torch.empty(L, B, D, dtype=acc, device=h0.device)
        fn = runtime.kernel(_FILE, "persona_gather", h0.dtype)
        runtime.launch(fn, (L * B, n_d, 1), (_POOL_THREADS, 1, 1),
                       (runtime.ptr(table), runtime.ptr(strides), runtime.ptr(index.contiguous()),
                        runtime.ptr(out), runtime.i32(B), runtime.i32(D)))
        return out
    # Split the tokens when (L*B x column blocks) would leave SMs idle; partial rows summed after.
    sms = torch.cuda.get_device_properties(h0.device).multi_processor_count
    splits, per_split = token_splits(T, max(1, min(cdiv(T, 64), (4 * sms) // (L * B * n_d))))
    out = torch.empty(splits, L, B, D, dtype=acc, device=h0.device)
    fn = runtime.kernel(_FILE, "persona_pool", h0.dtype)
    runtime.launch(fn, (L * B, n_d, splits), (_POOL_THREADS, 1, 1),
                   (runtime.ptr(table), runtime.ptr(strides), runtime.ptr(weights), runtime.ptr(out),
                    runtime.i32(L), runtime.i32(B), runtime.i32(T), runtime.i32(D),
                    runtime.i32(per_split)))
    return out[0] if splits == 1 else out.sum(dim=0)


def persona_tokens(layers: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """One warp per token, up to 8 directions per sweep over D."""
    w, table, strides, out = tokens_output(layers, w)
    h0 = layers[0]
    L, (B, T, D), P = len(layers), h0.shape, w.shape[1]
    fn = runtime.kernel(_FILE, "persona_tokens", h0.dtype)
    runtime.launch(fn, (L * B, cdiv(T, _TOKENS_WARPS), 1), (32 * _TOKENS_WARPS, 1, 1),
                   (runtime.ptr(table), runtime.ptr(strides), runtime.ptr(w), runtime.i64(w.stride(0)),
                    runtime.ptr(out), runtime.i32(B), runtime.i32(T), runtime.i32(D), runtime.i32(P)))
    return out
