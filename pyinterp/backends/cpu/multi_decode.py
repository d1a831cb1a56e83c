"""Multi-output sparse decode launchers on the CPU backend (the contract is in
:mod:`pyinterp.ops.multi_decode.function`), over the OpenMP kernels of
``csrc/cpu/multi_decode.cpp``: a row-major gather forward, a fused latent-major backward.
Every kernel is deterministic (no atomics; each latent sums its entries in a fixed order), so
``deterministic`` changes nothing."""
from __future__ import annotations

import torch

from pyinterp.backends.cpu import dtype_code, ext, num_threads
from pyinterp.backends.cpu import ptr as _p


def _plan(dmap, lo, hi):
    return (dmap.data_ptr(), lo.data_ptr(), hi.data_ptr(), dmap.shape[0], dmap.shape[1])


def multi_gather(coef, idx, W, bias, dmap, lo, hi):
    n, k = idx.shape
    P, d_src, d = W.shape
    G = dmap.shape[1]
    out = torch.empty(G, n, d, dtype=W.dtype)
    if n:
        ext().md_gather(coef.data_ptr(), idx.data_ptr(), W.data_ptr(), _p(bias), out.data_ptr(),
                        n, k, d, *_plan(dmap, lo, hi), d_src, dtype_code(W), num_threads())
    return out


def multi_backward(coef, idx, g, W, dmap, lo, hi, need_values, need_W, deterministic):
    n, k = idx.shape
    P, d_src, d = W.shape
    n_lat = dmap.shape[0] * d_src
    flat = idx.reshape(-1)
    offsets = torch.empty(n_lat + 1, dtype=torch.int64)
    order = torch.empty(flat.numel(), dtype=torch.int64)
    C = ext()
    C.sae_build_csr(flat.data_ptr(), flat.numel(), n_lat, offsets.data_ptr(), order.data_ptr())
    gv = torch.empty(n, k, dtype=coef.dtype) if need_values else None
    gW = None
    if need_W:  # the kernel writes every row of every mapped decoder; unmapped ones are zero
        gW = torch.empty(W.shape, dtype=W.dtype)
        unmapped = sorted(set(range(P)) - set(dmap.reshape(-1).tolist()))
        if unmapped:
            gW[unmapped] = 0
    C.md_backward(coef.data_ptr(), g.data_ptr(), W.data_ptr(), offsets.data_ptr(),
                  order.data_ptr(), n, k, d, _p(gv), _p(gW), *_plan(dmap, lo, hi), d_src,
                  dtype_code(W), num_threads())
    return gv, gW
