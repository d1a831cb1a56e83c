"""SoLU on the CUDA backend (``csrc/cuda/solu.cu`` via NVRTC): launchers and autograd Functions.

Forward: one block per row (one warp for short rows), the row cached in shared memory when it
fits. Saved for backward: x and per-row statistics ((lse,) or (lse, mean, rstd)). Backward
runs a persistent grid; weight/bias gradients are summed from per-block partial rows.
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp.backends.cuda import runtime as rt

_SOURCE = "solu.cu"
_SMEM_LIMIT = 48 * 1024  # default dynamic shared memory per block without an opt-in


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def _cache_bytes(x2: torch.Tensor) -> int:
    nbytes = x2.shape[1] * (8 if x2.dtype == torch.float64 else 4)
    return nbytes if nbytes <= _SMEM_LIMIT else 0


def _grid_rows(rows: int) -> int:
    return min(rows, 2**31 - 1)


def _persistent_blocks(rows: int, device: torch.device) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(rows, 4 * sms))


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(-1, x.shape[-1])


def solu_forward(x2: torch.Tensor):
    """x2: (rows, d) contiguous CUDA tensor -> (y, lse (rows,))."""
    rows, d = x2.shape
    y = torch.empty_like(x2)
    lse = torch.empty(rows, dtype=_acc_dtype(x2.dtype), device=x2.device)
    if rows:
        smem = _cache_bytes(x2)
        fn = rt.kernel(_SOURCE, "solu_fwd", x2.dtype)
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
        smem = _cache_bytes(x2)
        fn = rt.kernel(_SOURCE, "solu_ln_fwd", x2.dtype)
        rt.launch(fn, (_grid_rows(rows),), (_threads(d),),
                  (rt.ptr(x2), rt.ptr(w), rt.ptr(b), rt.ptr(y), rt.ptr(pre), rt.ptr(stats),
                   rt.i64(rows), rt.i32(d), rt.f32(eps), rt.i32(int(smem > 0)),
                   rt.i32(_vec(x2))), shared_mem=smem)
    return y, pre, stats


def solu_ln_backward(x2, w, stats, gy2, gpre2):
    rows, d = x2.shape
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


class _SoLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x2 = _rows(x)
        y, lse = solu_forward(x2)
        ctx.save_for_backward(x2, lse)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x2, lse = ctx.saved_tensors
        gy2 = gy.to(x2.dtype).contiguous().view(x2.shape)
        return solu_backward(x2, lse, gy2).view(ctx.shape)


class _SoLULN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, return_pre_ln):
        x2 = _rows(x)
        acc = _acc_dtype(x.dtype)
        w = None if weight is None else weight.detach().to(acc).contiguous()
        b = None if bias is None else bias.detach().to(acc).contiguous()
        y, pre, stats = solu_ln_forward(x2, w, b, eps, return_pre_ln)
        ctx.save_for_backward(x2, w, stats)
        ctx.shape = x.shape
        ctx.param_dtypes = (None if weight is None else weight.dtype,
                            None if bias is None else bias.dtype)
        ctx.set_materialize_grads(False)
        if return_pre_ln:
            return y.view(x.shape), pre.view(x.shape)
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gpre=None):
        x2, w, stats = ctx.saved_tensors
        wdt, bdt = ctx.param_dtypes
        gy2 = (torch.zeros_like(x2) if gy is None
               else gy.to(x2.dtype).contiguous().view(x2.shape))
        gp2 = None if gpre is None else gpre.to(x2.dtype).contiguous().view(x2.shape)
        gx, gw, gb = solu_ln_backward(x2, w, stats, gy2, gp2)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        return (gx.view(ctx.shape) if need_x else None,
                gw.to(wdt) if need_w and wdt is not None else None,
                gb.to(bdt) if need_b and bdt is not None else None,
                None, None)


def solu(x: torch.Tensor) -> torch.Tensor:
    """x: (..., d) CUDA tensor -> x * softmax(x, -1), same shape and dtype."""
    return _SoLU.apply(x)


def solu_ln(x, weight, bias, eps: float = 1e-5, return_pre_ln: bool = False):
    """x: (..., d), weight/bias: (d,) or None -> LN(SoLU(x)) [, SoLU(x)]."""
    return _SoLULN.apply(x, weight, bias, eps, return_pre_ln)
