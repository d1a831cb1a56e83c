"""Multi-output sparse decode launchers on the triton backend (the contract is in
:mod:`pyinterp.ops.multi_decode.function`; kernels in ``triton_kernels/multi_decode.py``).
grad W uses float atomics unless ``deterministic`` (or torch's deterministic mode) asks for
the per-latent segment sum."""
from __future__ import annotations

import torch
import triton

from pyinterp._common import triton_interpreted as _interpreted
from pyinterp.backends.multi_decode_common import two_kernel_backward
from pyinterp.backends.triton.kernels import package  # noqa: F401  (registers the kernels)
from pyinterp.triton_kernels import multi_decode as tk


def _block_d(d: int) -> int:
    return min(triton.next_power_of_2(max(d, 1)), 64 if _interpreted() else 256)


def multi_gather(coef, idx, W, bias, dmap, lo, hi):
    n, k = idx.shape
    _, d_src, d = W.shape
    S, G = dmap.shape
    out = torch.empty(G, n, d, dtype=W.dtype, device=W.device)
    if n:
        BD = _block_d(d)
        tk._md_gather_kernel[(n, G, triton.cdiv(d, BD))](
            coef, idx, W, bias if bias is not None else W, out, dmap, lo, hi, n, k, d, G, d_src,
            S, HAS_BIAS=bias is not None, ACC_F64=coef.dtype == torch.float64, BLOCK_J=16,
            BLOCK_D=BD)
    return out


def _gather_dot(g, idx, W, dmap, lo, hi):
    n, k = idx.shape
    _, d_src, d = W.shape
    S, G = dmap.shape
    out = torch.empty(n, k, dtype=g.dtype, device=g.device)
    if n:
        BJ = 16
        tk._md_gather_dot_kernel[(n, triton.cdiv(k, BJ))](
            g, idx, W, out, dmap, lo, hi, n, k, d, G, d_src, S,
            ACC_F64=g.dtype == torch.float64, BLOCK_J=BJ, BLOCK_D=_block_d(d))
    return out


def _scatter(coef, idx, g, dmap, lo, hi, shape, out_dtype, deterministic):
    n, k = idx.shape
    P, d_src, d = shape
    S, G = dmap.shape
    acc = torch.zeros(shape, dtype=coef.dtype, device=coef.device)
    BD = _block_d(d)
    if deterministic or torch.are_deterministic_algorithms_enabled():
        n_lat = S * d_src
        flat = idx.reshape(-1)
        order = torch.sort(flat, stable=True).indices
        offsets = torch.zeros(n_lat + 1, dtype=torch.int64, device=idx.device)
        offsets[1:] = torch.cumsum(torch.bincount(flat, minlength=n_lat), 0)
        if flat.numel():
            tk._md_scatter_segment_kernel[(n_lat, triton.cdiv(d, BD))](
                coef, order, offsets, g, acc, dmap, lo, hi, n, k, d, G, d_src, S, BLOCK_D=BD)
    elif n:
        tk._md_scatter_atomic_kernel[(n, triton.cdiv(d, BD))](
            coef, idx, g, acc, dmap, lo, hi, n, k, d, G, d_src, S, BLOCK_D=BD)
    return acc.to(out_dtype)


multi_backward = two_kernel_backward(_gather_dot, _scatter)
