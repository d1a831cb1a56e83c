"""SoLU launchers on the C++ CPU backend (``csrc/cpu/solu.cpp``); the contract is in
:mod:`pyinterp.ops.solu.function`. Multi-threaded over rows; weight/bias gradients from
per-thread partial sums (no atomics: bit-reproducible at a fixed thread count)."""
from __future__ import annotations

import torch

from pyinterp._common import acc_dtype
from pyinterp.backends.cpu import dtype_code, ext, num_threads, ptr


def solu_forward(x2: torch.Tensor):
    rows, d = x2.shape
    y = torch.empty_like(x2)
    lse = torch.empty(rows, dtype=acc_dtype(x2.dtype))
    if rows:
        ext().solu_forward(x2.data_ptr(), y.data_ptr(), lse.data_ptr(), rows, d,
                           dtype_code(x2), num_threads())
    return y, lse


def solu_backward(x2, lse, gy2):
    rows, d = x2.shape
    gx = torch.empty_like(x2)
    if rows:
        ext().solu_backward(x2.data_ptr(), lse.data_ptr(), gy2.data_ptr(), gx.data_ptr(),
                            rows, d, dtype_code(x2), num_threads())
    return gx


def solu_ln_forward(x2, w, b, eps: float, store_pre: bool):
    rows, d = x2.shape
    y = torch.empty_like(x2)
    pre = torch.empty_like(x2) if store_pre else None
    stats = torch.empty(rows, 3, dtype=acc_dtype(x2.dtype))
    if rows:
        ext().solu_ln_forward(x2.data_ptr(), ptr(w), ptr(b), y.data_ptr(), ptr(pre),
                              stats.data_ptr(), rows, d, eps, dtype_code(x2), num_threads())
    return y, pre, stats


def solu_ln_backward(x2, w, stats, gy2, gpre2, want_w: bool, want_b: bool):
    rows, d = x2.shape
    gx = torch.empty_like(x2)  # the kernel writes gx on the way to gw / gb
    new = torch.empty if rows else torch.zeros  # the kernel writes every entry of gw / gb
    gw = new(d, dtype=stats.dtype) if want_w else None
    gb = new(d, dtype=stats.dtype) if want_b else None
    if rows:  # null gw / gb: the kernel skips those partial sums
        ext().solu_ln_backward(x2.data_ptr(), ptr(w), stats.data_ptr(), ptr(gy2), ptr(gpre2),
                               gx.data_ptr(), ptr(gw), ptr(gb), rows, d, dtype_code(x2),
                               num_threads())
    return gx, gw, gb
