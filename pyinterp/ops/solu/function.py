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

from typing import Optional

import torch

from pyinterp._common import acc_dtype, device_guard, rows_view
from pyinterp.ops._dispatch import Op
from pyinterp.ops._library import custom_op, launchers, register_autograd, same_grads, same_inputs

SOLU_LAUNCHERS = ("solu_forward", "solu_backward")
SOLU_LN_LAUNCHERS = ("solu_ln_forward", "solu_ln_backward")


class SoLU(torch.autograd.Function):
    """y = x * softmax(x, -1). Outputs (y, lse); lse is not differentiable."""

    @staticmethod
    def forward(ctx, x, launchers):
        output = SoLU.compute(x, launchers)
        SoLU.setup(ctx, (x, launchers), output)
        return output

    @staticmethod
    def compute(x, launchers):
        with device_guard(x):
            y, lse = launchers.solu_forward(rows_view(x))
        return y.view(x.shape), lse

    @staticmethod
    def setup(ctx, inputs, output):
        x, launchers = inputs
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
        return gx.view(x.shape), None


class SoLULN(torch.autograd.Function):
    """LayerNorm(SoLU(x)) with optional affine. Outputs (y, pre, stats): pre = SoLU(x) when
    ``return_pre_ln`` (else an empty tensor), stats (rows, 3) not differentiable."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, return_pre_ln, launchers):
        output = SoLULN.compute(x, weight, bias, eps, return_pre_ln, launchers)
        SoLULN.setup(ctx, (x, weight, bias, eps, return_pre_ln, launchers), output)
        return output

    @staticmethod
    def compute(x, weight, bias, eps, return_pre_ln, launchers):
        acc = acc_dtype(x.dtype)
        w = None if weight is None else weight.detach().to(acc).contiguous()
        b = None if bias is None else bias.detach().to(acc).contiguous()
        with device_guard(x):
            y, pre, stats = launchers.solu_ln_forward(rows_view(x), w, b, eps, return_pre_ln)
        pre = pre.view(x.shape) if return_pre_ln else x.new_empty(0)
        return y.view(x.shape), pre, stats

    @staticmethod
    def setup(ctx, inputs, output):
        x, weight, bias, _eps, _return_pre_ln, launchers = inputs
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
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_w, need_b = need_w and wdt is not None, need_b and bdt is not None
        if not (need_x or need_w or need_b):
            return None, None, None, None, None, None
        x2 = rows_view(x)
        gy2 = None if gy is None else gy.to(x.dtype).contiguous().view(x2.shape)
        gp2 = None if gpre is None or gpre.numel() == 0 else \
            gpre.to(x.dtype).contiguous().view(x2.shape)
        with device_guard(x):
            gx, gw, gb = ctx.launchers.solu_ln_backward(x2, w, stats, gy2, gp2, need_w, need_b)
        return (gx.view(x.shape) if need_x else None,
                gw.to(wdt) if need_w else None,
                gb.to(bdt) if need_b else None,
                None, None, None)


# ---------------------------------------------------------------------------------------
# torch.library: torch.ops.pyinterp.solu / solu_ln, their backward launchers as custom ops


def _stats_fake(x, cols):
    return x.new_empty((x.numel() // x.shape[-1], cols) if cols else (x.numel() // x.shape[-1],),
                       dtype=acc_dtype(x.dtype))


@custom_op("solu_backward", lambda x2, lse, gy2, backend: torch.empty_like(x2))
def _solu_backward(x2: torch.Tensor, lse: torch.Tensor, gy2: torch.Tensor, backend: str
                   ) -> torch.Tensor:
    return launchers(backend, "solu").solu_backward(x2, lse, gy2)


def _solu_ln_backward_fake(x2, w, stats, gy2, gpre2, want_w, want_b, backend):
    d = x2.shape[1]
    return torch.empty_like(x2), stats.new_empty(d), stats.new_empty(d)


@custom_op("solu_ln_backward", _solu_ln_backward_fake)
def _solu_ln_backward(x2: torch.Tensor, w: Optional[torch.Tensor], stats: torch.Tensor,
                      gy2: Optional[torch.Tensor], gpre2: Optional[torch.Tensor], want_w: bool,
                      want_b: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gx, gw, gb = launchers(backend, "solu").solu_ln_backward(x2, w, stats, gy2, gpre2, want_w,
                                                             want_b)
    d = x2.shape[1]
    return gx, stats.new_zeros(d) if gw is None else gw, stats.new_zeros(d) if gb is None else gb


_BACKWARD_OPS = {"solu_backward": _solu_backward, "solu_ln_backward": _solu_ln_backward}


@custom_op("solu", lambda x, backend: (torch.empty_like(x), _stats_fake(x, 0)))
def solu_op(x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * softmax(x, -1), lse)."""
    return SoLU.compute(x, launchers(backend, "solu"))


def _solu_ln_fake(x, weight, bias, eps, return_pre_ln, backend):
    pre = torch.empty_like(x) if return_pre_ln else x.new_empty(0)
    return torch.empty_like(x), pre, _stats_fake(x, 3)


@custom_op("solu_ln", _solu_ln_fake)
def solu_ln_op(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               eps: float, return_pre_ln: bool, backend: str
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(LN(SoLU(x)), SoLU(x) or empty, stats)."""
    return SoLULN.compute(x, weight, bias, eps, return_pre_ln, launchers(backend, "solu"))


register_autograd(solu_op, SoLU, _BACKWARD_OPS, same_inputs, same_grads)
register_autograd(solu_ln_op, SoLULN, _BACKWARD_OPS, same_inputs, same_grads)

SOLU = Op("solu", "solu", SOLU_LAUNCHERS, SoLU, solu_op)
SOLU_LN = Op("solu_ln", "solu", SOLU_LN_LAUNCHERS, SoLULN, solu_ln_op)
