"""The autograd Functions of the SoLU family, shared by every kernel backend.

A backend supplies the launcher set (``pyinterp/backends/<name>/solu.py``), over contiguous
(rows, d) tensors:

- ``solu_forward(x2) -> (y, lse)``, lse (rows,) in the accumulation dtype
- ``solu_backward(x2, lse, gy2) -> gx``
- ``solu_ln_forward(x2, w, b, eps, store_pre) -> (y, pre or None, stats)``, w / b in the
  accumulation dtype (or None), stats (rows, 3) = (lse, mean, rstd)
- ``solu_ln_backward(x2, w, stats, gy2 or None, gpre2 or None, want_w, want_b)
  -> (gx, gw, gb)``, gw / gb (d,) in the accumulation dtype (a launcher may return None for
  one not wanted); a None upstream gradient counts as zero

Forward saves x and the per-row statistics only; backward recomputes from them.
"""
from __future__ import annotations

import torch

from pyinterp._common import acc_dtype, device_guard, rows_view

SOLU_LAUNCHERS = ("solu_forward", "solu_backward")
SOLU_LN_LAUNCHERS = ("solu_ln_forward", "solu_ln_backward")


class SoLU(torch.autograd.Function):
    """y = x * softmax(x, -1). Outputs (y, lse); lse is not differentiable."""

    @staticmethod
    def forward(launchers, x):
        with device_guard(x):
            y, lse = launchers.solu_forward(rows_view(x))
        return y.view(x.shape), lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        launchers, x = inputs
        ctx.launchers = launchers
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, output[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, _glse):
        x, lse = ctx.saved_tensors
        x2 = rows_view(x)
        with device_guard(x):
            gx = ctx.launchers.solu_backward(x2, lse, gy.to(x.dtype).contiguous().view(x2.shape))
        return None, gx.view(x.shape)


class SoLULN(torch.autograd.Function):
    """LayerNorm(SoLU(x)) with optional affine. Outputs (y, pre, stats): pre = SoLU(x) when
    ``return_pre_ln`` (else an empty tensor), stats (rows, 3) not differentiable."""

    @staticmethod
    def forward(launchers, x, weight, bias, eps, return_pre_ln):
        acc = acc_dtype(x.dtype)
        w = None if weight is None else weight.detach().to(acc).contiguous()
        b = None if bias is None else bias.detach().to(acc).contiguous()
        with device_guard(x):
            y, pre, stats = launchers.solu_ln_forward(rows_view(x), w, b, eps, return_pre_ln)
        pre = pre.view(x.shape) if return_pre_ln else x.new_empty(0)
        return y.view(x.shape), pre, stats

    @staticmethod
    def setup_context(ctx, inputs, output):
        launchers, x, weight, bias, _eps, _return_pre_ln = inputs
        ctx.launchers = launchers
        ctx.mark_non_differentiable(output[2])
        ctx.set_materialize_grads(False)
        w = None if weight is None else weight.detach().to(acc_dtype(x.dtype)).contiguous()
        ctx.save_for_backward(x, w, output[2])
        ctx.param_dtypes = (None if weight is None else weight.dtype,
                            None if bias is None else bias.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gpre, _gstats):
        x, w, stats = ctx.saved_tensors
        wdt, bdt = ctx.param_dtypes
        need_x, need_w, need_b = ctx.needs_input_grad[1:4]
        need_w, need_b = need_w and wdt is not None, need_b and bdt is not None
        if not (need_x or need_w or need_b):
            return None, None, None, None, None, None
        x2 = rows_view(x)
        gy2 = None if gy is None else gy.to(x.dtype).contiguous().view(x2.shape)
        gp2 = None if gpre is None or gpre.numel() == 0 else \
            gpre.to(x.dtype).contiguous().view(x2.shape)
        with device_guard(x):
            gx, gw, gb = ctx.launchers.solu_ln_backward(x2, w, stats, gy2, gp2, need_w, need_b)
        return (None,
                gx.view(x.shape) if need_x else None,
                gw.to(wdt) if need_w else None,
                gb.to(bdt) if need_b else None,
                None, None)
