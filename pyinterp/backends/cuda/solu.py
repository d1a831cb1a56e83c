"""SoLU launchers on the CUDA backend (``csrc/cuda/solu.cu`` via NVRTC); the contract is in
:mod:`pyinterp.ops.solu.function`.

Forward: one block per row (one warp for short rows), the row cached in shared memory when it
fits. Saved for backward: x and per-row statistics ((lse,) or (lse, mean, rstd)). Backward
runs a persistent grid; weight/bias gradients are summed from per-block partial rows.
"""
from __future__ import annotations

import torch

from pyinterp._common import acc_dtype as _acc_dtype
from pyinterp.backends.cuda import runtime as rt

_SOURCE = "solu.cu"


def _threads(d: int) -> int:
    """Threads per row: about 8 elements each, a warp at least, 1024 at most."""
    t = 32
    while t < 1024 and t * 8 < d:
        t *= 2
    return t


def _vec(x2: torch.Tensor) -> int:
    """1 when rows can be read with 16-byte vector loads."""
    n = 16 // x2.element_size()
    return int(x2.data_ptr() % 16 == 0 and x2.shape[1] % n == 0)


def _cache_bytes(x2: torch.Tensor, fn) -> int:
    """Dynamic shared memory to cache a row in the accumulation type, 0 when it does not fit
    (rt.launch opts in beyond 48 KiB: rows up to ~57k float32 on an H100/H200)."""
    nbytes = x2.shape[1] * (8 if x2.dtype == torch.float64 else 4)
    return nbytes if nbytes <= rt.max_dynamic_smem(fn) else 0


def _grid_rows(rows: int) -> int:
    return min(rows, 2**31 - 1)


def _persistent_blocks(rows: int, device: torch.device) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(rows, 4 * sms))


def solu_forward(x2: torch.Tensor):
    """x2: (rows, d) contiguous CUDA tensor -> (y, lse (rows,))."""
    rows, d = x2.shape
    y = torch.empty_like(x2)
    lse = torch.empty(rows, dtype=_acc_dtype(x2.dtype), device=x2.device)
    if rows:
        fn = rt.kernel(_SOURCE, "solu_fwd", x2.dtype)
        smem = _cache_bytes(x2, fn)
        rt.launch(fn, (_grid_rows(rows),), (_threads(d),),
                  (rt.ptr(x2), rt.ptr(y), rt.ptr(lse), rt.i64(rows), rt.i32(d),
                   rt.i32(int(smem > 0)), rt.i32(_vec(x2))), shared_mem=smem)
    return y, lse


def solu_backward(x2, lse, gy2):
    rows, d = x2.shape
    gx = torch.empty_like(x2)
    if rows:
        fn = rt.kernel(_SOURCE, "solu_bwd", x2.dtype)
        rt.launch(fn, (_persistent_blocks(rows, x2.device),), (_threads(d),),
                  (rt.ptr(x2), rt.ptr(lse), rt.ptr(gy2), rt.ptr(gx), rt.i64(rows), rt.i32(d)))
    return gx


def solu_ln_forward(x2, w, b, eps: float, store_pre: bool):
    rows, d = x2.shape
    y = torch.empty_like(x2)
    pre = torch.empty_like(x2) if store_pre else None
    stats = torch.empty(rows, 3, dtype=_acc_dtype(x2.dtype), device=x2.device)
    if rows:
        fn = rt.kernel(_SOURCE, "solu_ln_fwd", x2.dtype)
        smem = _cache_bytes(x2, fn)
        rt.launch(fn, (_grid_rows(rows),), (_threads(d),),
                  (rt.ptr(x2), rt.ptr(w), rt.ptr(b), rt.ptr(y), rt.ptr(pre), rt.ptr(stats),
                   rt.i64(rows), rt.i32(d), rt.f32(eps), rt.i32(int(smem > 0)),
                   rt.i32(_vec(x2))), shared_mem=smem)
    return y, pre, stats


def solu_ln_backward(x2, w, stats, gy2, gpre2, want_w: bool, want_b: bool):
    # gw and gb are always computed: the persistent grid sums both in the same pass
    rows, d = x2.shape
    gy2 = torch.zeros_like(x2) if gy2 is None else gy2
    gx = torch.empty_like(x2)
    if rows == 0:
        z = torch.zeros(d, dtype=stats.dtype, device=x2.device)
        return gx, z, z.clone()
    blocks = _persistent_blocks(rows, x2.device)
    pw = torch.empty(blocks, d, dtype=stats.dtype, device=x2.device)
    pb = torch.empty(blocks, d, dtype=stats.dtype, device=x2.device)
    fn = rt.kernel(_SOURCE, "solu_ln_bwd", x2.dtype)
    rt.launch(fn, (blocks,), (_threads(d),),
              (rt.ptr(x2), rt.ptr(w), rt.ptr(stats), rt.ptr(gy2), rt.ptr(gpre2), rt.ptr(gx),
               rt.ptr(pw), rt.ptr(pb), rt.i64(rows), rt.i32(d)))
    return gx, pw.sum(0), pb.sum(0)

