"""Autograd Functions of SoLU shared by the GPU backends (triton, cuda).

A backend supplies four launchers over contiguous (rows, d) tensors and gets ``solu`` and
``solu_ln`` back (:func:`build`):

- ``solu_forward(x2) -> (y, lse)``
- ``solu_backward(x2, lse, gy2) -> gx``
- ``solu_ln_forward(x2, w, b, eps, return_pre_ln) -> (y, pre or None, stats)``, with w / b
  already in the accumulation dtype (or None) and stats (rows, 3) = (lse, mean, rstd)
- ``solu_ln_backward(x2, w, stats, gy2, gpre2 or None) -> (gx, gw, gb)``

Forward saves x and the per-row statistics only; backward recomputes from them.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """x: (..., d) -> contiguous (rows, d) view (a copy only when x is not contiguous)."""
    return x.contiguous().view(-1, x.shape[-1])


def build(solu_forward, solu_backward, solu_ln_forward, solu_ln_backward) -> SimpleNamespace:
    class _SoLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x2 = rows_view(x)
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
            x2 = rows_view(x)
            acc = acc_dtype(x.dtype)
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
        """x: (..., d) -> x * softmax(x, -1), same shape and dtype."""
        return _SoLU.apply(x)

    def solu_ln(x, weight, bias, eps: float = 1e-5, return_pre_ln: bool = False):
        """x: (..., d), weight/bias: (d,) or None -> LN(SoLU(x)) [, SoLU(x)]."""
        return _SoLULN.apply(x, weight, bias, eps, return_pre_ln)

    return SimpleNamespace(solu=solu, solu_ln=solu_ln)
