"""Multi-output sparse decode launchers on the CUDA backend (``csrc/cuda/multi_decode.cu``);
the contract is in :mod:`pyinterp.ops.multi_decode.function`. grad W uses float atomics
unless ``deterministic`` (or torch's deterministic mode) asks for the per-latent segment sum."""
from __future__ import annotations

import torch

from pyinterp.backends.cuda import runtime
from pyinterp.backends.multi_decode_common import two_kernel_backward

_FILE = "multi_decode.cu"
_THREADS = 256


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _plan_args(dmap, lo, hi, n, k, d, d_src):
    S, G = dmap.shape
    return (runtime.ptr(dmap), runtime.ptr(lo), runtime.ptr(hi), runtime.i64(n), runtime.i32(k),
            runtime.i32(d), runtime.i32(G), runtime.i64(d_src), runtime.i64(S))


def multi_gather(coef, idx, W, bias, dmap, lo, hi):
    n, k = idx.shape
    _, d_src, d = W.shape
    G = dmap.shape[1]
    out = torch.empty(G, n, d, dtype=W.dtype, device=W.device)
    if n:
        runtime.launch(runtime.kernel(_FILE, "md_gather", W.dtype), (n, G, _cdiv(d, _THREADS)),
                       (_THREADS,), (runtime.ptr(coef), runtime.ptr(idx), runtime.ptr(W),
                                     runtime.ptr(bias), runtime.ptr(out),
                                     *_plan_args(dmap, lo, hi, n, k, d, d_src)))
    return out


def _gather_dot(g, idx, W, dmap, lo, hi):
    n, k = idx.shape
    _, d_src, d = W.shape
    out = torch.empty(n, k, dtype=g.dtype, device=g.device)
    if n * k:
        warps = _THREADS // 32
        runtime.launch(runtime.kernel(_FILE, "md_gather_dot", W.dtype), (_cdiv(n * k, warps),),
                       (_THREADS,), (runtime.ptr(g), runtime.ptr(idx), runtime.ptr(W),
                                     runtime.ptr(out), *_plan_args(dmap, lo, hi, n, k, d, d_src)))
    return out


def _scatter(coef, idx, g, dmap, lo, hi, shape, out_dtype, deterministic):
    n, k = idx.shape
    P, d_src, d = shape
    cd = coef.dtype
    acc = torch.zeros(shape, dtype=cd, device=coef.device)
    plan = _plan_args(dmap, lo, hi, n, k, d, d_src)
    if deterministic or torch.are_deterministic_algorithms_enabled():
        n_lat = dmap.shape[0] * d_src
        flat = idx.reshape(-1)
        order = torch.sort(flat, stable=True).indices
        offsets = torch.zeros(n_lat + 1, dtype=torch.int64, device=idx.device)
        offsets[1:] = torch.cumsum(torch.bincount(flat, minlength=n_lat), 0)
        if flat.numel():
            runtime.launch(runtime.kernel(_FILE, "md_scatter_segment", cd),
                           (n_lat, _cdiv(d, _THREADS)), (_THREADS,),
                           (runtime.ptr(coef), runtime.ptr(order), runtime.ptr(offsets),
                            runtime.ptr(g), runtime.ptr(acc), *plan))
    elif n:
        runtime.launch(runtime.kernel(_FILE, "md_scatter_atomic", cd), (n, _cdiv(d, _THREADS)),
                       (_THREADS,), (runtime.ptr(coef), runtime.ptr(idx), runtime.ptr(g),
                                     runtime.ptr(acc), *plan))
    return acc.to(out_dtype)


multi_backward = two_kernel_backward(_gather_dot, _scatter)
