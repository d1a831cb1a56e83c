"""Shared by the GPU backends' multi_decode launchers (contract in
pyinterp/ops/multi_decode/function.py)."""
from __future__ import annotations


def two_kernel_backward(gather_dot, scatter):
    """``multi_backward`` from a gathered-dot kernel (grad values) and a scatter kernel (grad
    W): the GPU backends launch the two separately."""
    def multi_backward(coef, idx, g, W, dmap, lo, hi, need_values, need_W, deterministic):
        gv = gather_dot(g, idx, W, dmap, lo, hi) if need_values else None
        gW = scatter(coef, idx, g, dmap, lo, hi, tuple(W.shape), W.dtype, deterministic) \
            if need_W else None
        return gv, gW
    return multi_backward
