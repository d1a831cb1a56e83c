"""SoLU launchers on the Triton backend (kernels: ``triton_kernels/solu.py``); the contract is
in :mod:`pyinterp.ops.solu.function`.

``MAX_BLOCK`` is a module attribute so tests can force the multi-block path on small rows.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from pyinterp._common import acc_dtype
from pyinterp.backends.triton.kernels import package  # noqa: F401  (registers the kernels)
from pyinterp.triton_kernels import solu as tk

# Longest row kept in registers by one program; longer rows loop over blocks of this size.
MAX_BLOCK = 8192


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_config(n_cols: int, max_block: Optional[int] = None) -> tuple[int, bool, int]:
    """(BLOCK, SINGLE, num_warps) for rows of ``n_cols``."""
    cap = max_block or MAX_BLOCK
    block = min(triton.next_power_of_2(n_cols), cap)
    single = n_cols <= block
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    return block, single, num_warps


def _persistent_programs(rows: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(rows, 4 * sms))
    return max(1, min(rows, 4))  # interpreter: few programs, each looping over rows


def solu_forward(x2: torch.Tensor, max_block: Optional[int] = None):
    """x2: (rows, d) contiguous -> (y (rows, d), lse (rows,))."""
    rows, d = x2.shape
    y = torch.empty_like(x2)
    lse = torch.empty(rows, dtype=acc_dtype(x2.dtype), device=x2.device)
    if rows:
        block, single, warps = block_config(d, max_block)
        tk._solu_fwd_kernel[(rows,)](x2, y, lse, d, BLOCK=block, SINGLE=single,
                                     ACC=_tl_acc(x2.dtype), num_warps=warps)
    return y, lse


def solu_backward(x2, lse, gy2, max_block: Optional[int] = None):
    rows, d = x2.shape
    gx = torch.empty_like(x2)
    if rows:
        block, single, warps = block_config(d, max_block)
        tk._solu_bwd_kernel[(rows,)](x2, lse, gy2, gx, d, BLOCK=block, SINGLE=single,
                                     ACC=_tl_acc(x2.dtype), num_warps=warps)
    return gx


def solu_ln_forward(x2, w, b, eps: float, store_pre: bool, max_block: Optional[int] = None):
    """x2: (rows, d); w, b: (d,) in the accumulation dtype or None -> (y, pre|None, stats)."""
    rows, d = x2.shape
    y = torch.empty_like(x2)
    pre = torch.empty_like(x2) if store_pre else None
    stats = torch.empty(rows, 3, dtype=acc_dtype(x2.dtype), device=x2.device)
    if rows:
        block, single, warps = block_config(d, max_block)
        tk._solu_ln_fwd_kernel[(rows,)](
            x2, x2 if w is None else w, x2 if b is None else b, y, y if pre is None else pre,
            stats, d, eps, BLOCK=block, SINGLE=single, HAS_W=w is not None,
            HAS_B=b is not None, STORE_PRE=store_pre, ACC=_tl_acc(x2.dtype), num_warps=warps)
    return y, pre, stats


def solu_ln_backward(x2, w, stats, gy2, gpre2, want_w: bool, want_b: bool,
                     max_block: Optional[int] = None):
    """-> (gx (rows, d), gw (d,), gb (d,)); gw/gb in the accumulation dtype, both always
    computed (the persistent grid sums them in the same pass)."""
    rows, d = x2.shape
    gy2 = torch.zeros_like(x2) if gy2 is None else gy2
    gx = torch.empty_like(x2)
    acc = stats.dtype
    if rows == 0:
        z = torch.zeros(d, dtype=acc, device=x2.device)
        return gx, z, z.clone()
    nprog = _persistent_programs(rows, x2.device)
    pw = torch.empty(nprog, d, dtype=acc, device=x2.device)
    pb = torch.empty(nprog, d, dtype=acc, device=x2.device)
    block, single, warps = block_config(d, max_block)
    tk._solu_ln_bwd_kernel[(nprog,)](
        x2, x2 if w is None else w, stats, gy2, x2 if gpre2 is None else gpre2, gx, pw, pb,
        rows, d, BLOCK=block, SINGLE=single, HAS_W=w is not None, HAS_GPRE=gpre2 is not None,
        ACC=_tl_acc(x2.dtype), num_warps=warps)
    return gx, pw.sum(0), pb.sum(0)
