"""Persona projections in Triton: the two launchers that ``pyinterp.ops._persona_plan`` wraps in
its (shared, torch) autograd Functions. Same interface as ``pyinterp.backends.cpu.persona``.

Layers are read in place: a device table of L data pointers (int64, cast back to typed pointers
in the kernel) and a table of L x 3 element strides, so a list of non-contiguous views of a
model's residual stream costs one launch and no copy.

- ``_pool_kernel``: one program per (layer x row, D block, token split) walks its tokens in
  BLOCK_T tiles and accumulates sum_t w[b, t] h[l, b, t, d_block] in float32 (float64 for
  float64). Zero-weight tokens are masked out of the load, so padding costs no DRAM traffic.
  When (L*B x D blocks) would not fill the GPU, the tokens are split and partial rows summed.
- ``_gather_kernel``: h[l, b, index[b]] ("last"), NaN where index < 0.
- ``_tokens_kernel``: proj[l, b, t, p] = h[l, b, t] . w[l, p] for tiles of BLOCK_T tokens x
  BLOCK_P directions, reducing over D in BLOCK_D chunks with a broadcast multiply-sum (P is
  small; a tl.dot would need P >= 16 and TF32 would cost float32 accuracy).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
       torch.float64: tl.float64}


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def _pool_kernel(TABLE, STRIDES, W, OUT, L, B, T, D, per_split,
                 DT: tl.constexpr, ACC_F64: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    acc_t = tl.float64 if ACC_F64 else tl.float32
    lb = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    split = tl.program_id(2)
    l = lb // B
    b = lb % B
    base = tl.load(TABLE + l).to(tl.pointer_type(DT))
    sb = tl.load(STRIDES + 3 * l)
    st = tl.load(STRIDES + 3 * l + 1)
    sd = tl.load(STRIDES + 3 * l + 2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row = base + b * sb + offs_d.to(tl.int64)[None, :] * sd
    t_lo = split * per_split
    t_hi = tl.minimum(T, t_lo + per_split)
    acc = tl.zeros([BLOCK_D], dtype=acc_t)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < t_hi
        w = tl.load(W + b * T + offs_t, mask=t_ok, other=0.0)
        sel = t_ok & (w != 0)  # NaN weights stay selected (a row that selects nothing)
        x = tl.load(row + offs_t.to(tl.int64)[:, None] * st, mask=sel[:, None] & d_ok[None, :],
                    other=0.0).to(acc_t)
        acc += tl.sum(x * w[:, None], axis=0)
    tl.store(OUT + ((split * L + l) * B + b) * D + offs_d, acc, mask=d_ok)


@triton.jit
def _gather_kernel(TABLE, STRIDES, INDEX, OUT, B, D,
                   DT: tl.constexpr, ACC_F64: tl.constexpr, BLOCK_D: tl.constexpr):
    acc_t = tl.float64 if ACC_F64 else tl.float32
    lb = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    l = lb // B
    b = lb % B
    base = tl.load(TABLE + l).to(tl.pointer_type(DT))
    sb = tl.load(STRIDES + 3 * l)
    st = tl.load(STRIDES + 3 * l + 1)
    sd = tl.load(STRIDES + 3 * l + 2)
    t = tl.load(INDEX + b)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    # index < 0 (the row selects nothing): read token 0 (in bounds) and overwrite with NaN
    x = tl.load(base + b * sb + tl.maximum(t, 0) * st + offs_d.to(tl.int64) * sd, mask=d_ok,
                other=0.0).to(acc_t)
    x = tl.where(t >= 0, x, float("nan"))
    tl.store(OUT + lb * D + offs_d, x, mask=d_ok)


@triton.jit
def _tokens_kernel(TABLE, STRIDES, WV, OUT, w_lstride, B, T, D, P,
                   DT: tl.constexpr, ACC_F64: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    acc_t = tl.float64 if ACC_F64 else tl.float32
    lb = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    pid_p = tl.program_id(2)
    l = lb // B
    b = lb % B
    base = tl.load(TABLE + l).to(tl.pointer_type(DT))
    sb = tl.load(STRIDES + 3 * l)
    st = tl.load(STRIDES + 3 * l + 1)
    sd = tl.load(STRIDES + 3 * l + 2)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    rows = base + b * sb + offs_t.to(tl.int64)[:, None] * st
    wl = WV + l * w_lstride
    acc = tl.zeros([BLOCK_T, BLOCK_P], dtype=acc_t)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        x = tl.load(rows + offs_d.to(tl.int64)[None, :] * sd, mask=t_ok[:, None] & d_ok[None, :],
                    other=0.0).to(acc_t)  # (BLOCK_T, BLOCK_D)
        w = tl.load(wl + offs_p[None, :] * D + offs_d[:, None], mask=d_ok[:, None] & p_ok[None, :],
                    other=0.0)  # (BLOCK_D, BLOCK_P)
        acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
    out = OUT + ((lb * T + offs_t)[:, None]) * P + offs_p[None, :]
    tl.store(out, acc, mask=t_ok[:, None] & p_ok[None, :])


def _tables(layers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    device = layers[0].device
    ptrs = torch.tensor([h.data_ptr() for h in layers], dtype=torch.int64, device=device)
    strides = torch.tensor([s for h in layers for s in h.stride()], dtype=torch.int64, device=device)
    return ptrs, strides


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # interpreter: small, so that tests on small shapes exercise the split path


def persona_pool(layers: list[torch.Tensor], weights: Optional[torch.Tensor],
                 index: Optional[torch.Tensor], *, splits: Optional[int] = None) -> torch.Tensor:
    """layers: L x (B, T, D); weights: (B, T) contiguous compute-dtype, or index: (B,) int64.
    Returns hbar (L, B, D) in the compute dtype."""
    h0 = layers[0]
    L, (B, T, D) = len(layers), h0.shape
    acc = _acc(h0.dtype)
    table, strides = _tables(layers)
    block_d = min(128, triton.next_power_of_2(D))
    n_d = triton.cdiv(D, block_d)
    f64 = acc == torch.float64
    if index is not None:
        out = torch.empty(L, B, D, dtype=acc, device=h0.device)
        _gather_kernel[(L * B, n_d)](table, strides, index.contiguous(), out, B, D,
                                     DT=_TL[h0.dtype], ACC_F64=f64, BLOCK_D=block_d)
        return out
    block_t = 8 if _interpreted() else 16
    if splits is None:
        splits = max(1, min(triton.cdiv(T, block_t), _target_programs(h0.device) // (L * B * n_d)))
    per_split = triton.cdiv(T, splits)
    per_split = triton.cdiv(per_split, block_t) * block_t  # whole tiles per split
    splits = triton.cdiv(T, per_split)
    out = torch.empty(splits, L, B, D, dtype=acc, device=h0.device)
    _pool_kernel[(L * B, n_d, splits)](table, strides, weights, out, L, B, T, D, per_split,
                                       DT=_TL[h0.dtype], ACC_F64=f64, BLOCK_T=block_t,
                                       BLOCK_D=block_d)
    return out[0] if splits == 1 else out.sum(dim=0)


def persona_tokens(layers: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """layers: L x (B, T, D); w: (L, P, D) compute dtype (rows of each layer contiguous; a
    stride-0 layer dim for shared directions). Returns (L, B, T, P) in the compute dtype."""
    h0 = layers[0]
    L, (B, T, D) = len(layers), h0.shape
    P = w.shape[1]
    if not w[0].is_contiguous():
        w = w.contiguous()
    table, strides = _tables(layers)
    out = torch.empty(L, B, T, P, dtype=w.dtype, device=h0.device)
    block_p = min(16, triton.next_power_of_2(P))
    block_t = 16
    block_d = 32 if w.dtype == torch.float64 else 64
    grid = (L * B, triton.cdiv(T, block_t), triton.cdiv(P, block_p))
    _tokens_kernel[grid](table, strides, w, out, w.stride(0), B, T, D, P,
                         DT=_TL[h0.dtype], ACC_F64=w.dtype == torch.float64,
                         BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_P=block_p)
    return out
