"""Helpers every layer shares (ops, backends, library code), written once.

Imports torch and the standard library only, so any pyinterp module may import it. The oracle
(``pyinterp.reference``) deliberately does not: it stays independent of production code.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of ``dtype``: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_interpreted() -> bool:
    """Whether Triton's interpreter is on (TRITON_INTERPRET set and not 0): kernels then run on
    CPU tensors, about 1000x slower than compiled code."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """x: (..., d) -> contiguous (rows, d) view (a copy only when x is not contiguous)."""
    return x.contiguous().view(-1, x.shape[-1])


_NO_GUARD = contextlib.nullcontext()  # reusable: entering it does nothing


def device_guard(t: Optional[torch.Tensor]):
    """Context manager making ``t``'s CUDA device the current one (a no-op for CPU tensors).

    Every launcher runs under it, so tensors on cuda:1 launch on cuda:1 (and on its current
    stream) even when cuda:0 is the current device."""
    if t is None or t.device.type != "cuda":
        return _NO_GUARD
    return torch.cuda.device(t.device.index if t.device.index is not None else
                             torch.cuda.current_device())


# Attention rule kinds, as the kernels number them (csrc/cpu/attention.cpp RuleKind, the
# Triton and CUDA stats kernels): key = query - n, key = n, earlier same token, prefix match.
RULE_KINDS = {"offset": 0, "pos": 1, "duplicate": 2, "induction": 3}


def to_device_async(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A short host list as a tensor on ``device`` without stalling the host: for CUDA it is
    staged in pinned memory and copied asynchronously on the current stream (the caching host
    allocator keeps the pinned block until that copy has run). ``torch.tensor(list,
    device="cuda")`` copies from pageable memory, which waits for the stream to drain: a sync
    per call inside a hot launcher or a model hook."""
    t = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def device_layer_table(layers) -> tuple[torch.Tensor, torch.Tensor]:
    """Data pointers (L,) and element strides (L*3,) of per-layer (B, T, D) views, as int64
    tensors on the layers' device (copied without a host sync): how the GPU persona kernels
    read a list of views of a model's residual stream in place."""
    device = layers[0].device
    ptrs = to_device_async([h.data_ptr() for h in layers], torch.int64, device)
    strides = to_device_async([s for h in layers for s in h.stride()], torch.int64, device)
    return ptrs, strides
