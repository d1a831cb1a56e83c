"""SoLU on the C++ CPU backend (``csrc/cpu/solu.cpp``): launchers and autograd Functions.

Forward saves x and per-row statistics only (log-sum-exp; plus mean and rstd for solu_ln);
backward recomputes softmax and the pre-LN row from them.
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp.backends.cpu import dtype_code, ext, num_threads


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x: (..., d) -> contiguous (rows, d) view (a copy only when x is not contiguous)."""
    return x.contiguous().view(-1, x.shape[-1])


def _param(p: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if p is None else p.detach().to(dtype).contiguous()


class _SoLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x2 = _rows(x)
        rows, d = x2.shape
        y = torch.empty_like(x2)
        lse = torch.empty(rows, dtype=_acc_dtype(x.dtype))
        if rows:
            ext().solu_forward(x2.data_ptr(), y.data_ptr(), lse.data_ptr(), rows, d,
                               dtype_code(x2), num_threads())
        ctx.save_for_backward(x2, lse)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x2, lse = ctx.saved_tensors
        rows, d = x2.shape
        gy2 = gy.to(x2.dtype).contiguous().view(rows, d)
        gx = torch.empty_like(x2)
        if rows:
            ext().solu_backward(x2.data_ptr(), lse.data_ptr(), gy2.data_ptr(), gx.data_ptr(),
                                rows, d, dtype_code(x2), num_threads())
        return gx.view(ctx.shape)


class _SoLULN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, return_pre_ln):
        x2 = _rows(x)
        rows, d = x2.shape
        acc = _acc_dtype(x.dtype)
        w = _param(weight, acc)
        b = _param(bias, acc)
        y = torch.empty_like(x2)
        pre = torch.empty_like(x2) if return_pre_ln else None
        stats = torch.empty(rows, 3, dtype=acc)
        if rows:
            ext().solu_ln_forward(x2.data_ptr(), _ptr(w), _ptr(b), y.data_ptr(), _ptr(pre),
                                  stats.data_ptr(), rows, d, eps, dtype_code(x2), num_threads())
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
        rows, d = x2.shape
        wdt, bdt = ctx.param_dtypes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_w = need_w and wdt is not None
        need_b = need_b and bdt is not None
        gy2 = None if gy is None else gy.to(x2.dtype).contiguous().view(rows, d)
        gp2 = None if gpre is None else gpre.to(x2.dtype).contiguous().view(rows, d)
        gx = torch.empty_like(x2) if need_x else None
        gw = torch.empty(d, dtype=stats.dtype) if need_w else None
        gb = torch.empty(d, dtype=stats.dtype) if need_b else None
        if need_x or need_w or need_b:
            if gx is None:  # the kernel writes gx on the way; give it somewhere to go
                gx = torch.empty_like(x2)
            if rows:
                ext().solu_ln_backward(x2.data_ptr(), _ptr(w), stats.data_ptr(), _ptr(gy2),
                                       _ptr(gp2), gx.data_ptr(), _ptr(gw), _ptr(gb), rows, d,
                                       dtype_code(x2), num_threads())
            else:
                gx.zero_()
                for g in (gw, gb):
                    if g is not None:
                        g.zero_()
        return (gx.view(ctx.shape) if need_x else None,
                gw.to(wdt) if need_w else None,
                gb.to(bdt) if need_b else None,
                None, None)


def solu(x: torch.Tensor) -> torch.Tensor:
    """x: (..., d) -> x * softmax(x, -1), same shape and dtype."""
    return _SoLU.apply(x)


def solu_ln(x, weight, bias, eps: float = 1e-5, return_pre_ln: bool = False):
    """x: (..., d), weight/bias: (d,) or None -> LN(SoLU(x)) [, SoLU(x)]."""
    return _SoLULN.apply(x, weight, bias, eps, return_pre_ln)
