"""The autograd Functions of the JumpReLU training ops.

- :class:`JumpReLUSelect`: the sparse encoder of the band selection, i.e. the sae family's
  :class:`~pyinterp.ops.sae.function.SparseEncode` with the ``band`` launcher:
  ``band(x, W_enc, b_enc, b_dec, threshold, bandwidth, max_active) -> (pre, indices, mask)``:
  the latents with pre > theta - bandwidth/2 per row, sorted by the tie rule, ``pre`` in the
  accumulation dtype (float32; float64 for float64 x) with -inf padding, ``mask`` marking the
  selected entries. Backward: the sparse encoder backward (``gather``, ``scatter_rows``).
- :class:`Gate`, :class:`StepL0`: the straight-through estimators on a selected code; plain
  torch over the (N, w) code (no launcher).
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp._common import acc_dtype, device_guard
from pyinterp.ops._dispatch import Op
from pyinterp.ops._library import custom_op, launchers, register_autograd, same_grads, same_inputs
from pyinterp.ops.sae.function import BACKWARD_LAUNCHERS, BACKWARD_OPS, SparseEncode

SELECT_LAUNCHERS = ("band",) + BACKWARD_LAUNCHERS


class JumpReLUSelect(SparseEncode):
    """(pre, indices, mask) of the band selection; gradients as :class:`SparseEncode`'s (to x,
    W_enc, b_enc, b_dec through the selected entries; none to the threshold)."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, threshold, bandwidth, max_active, launchers):
        inputs = (x, W_enc, b_enc, b_dec, threshold, bandwidth, max_active, launchers)
        output = JumpReLUSelect.compute(*inputs)
        SparseEncode.setup(ctx, inputs, output)
        return output

    @staticmethod
    def compute(x, W_enc, b_enc, b_dec, threshold, bandwidth, max_active, launchers):
        with device_guard(x):
            return launchers.band(x, W_enc, b_enc, b_dec, threshold, bandwidth, max_active)


def _select_fake(x, W_enc, b_enc, b_dec, threshold, bandwidth, max_active, backend):
    n = x.shape[0]
    width = max_active or torch.library.get_ctx().new_dynamic_size(min=1)
    return (x.new_empty(n, width, dtype=acc_dtype(x.dtype)),
            x.new_empty(n, width, dtype=torch.int64), x.new_empty(n, width, dtype=torch.bool))


@custom_op("jumprelu_select", _select_fake)
def jumprelu_select_op(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                       b_dec: Optional[torch.Tensor], threshold: torch.Tensor, bandwidth: float,
                       max_active: Optional[int], backend: str
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre, indices, mask) of the band selection; x (N, d_in) contiguous."""
    return JumpReLUSelect.compute(x, W_enc, b_enc, b_dec, threshold, bandwidth, max_active,
                                  launchers(backend, "jumprelu"))


register_autograd(jumprelu_select_op, JumpReLUSelect, BACKWARD_OPS, same_inputs, same_grads)

JUMPRELU_SELECT = Op("jumprelu_select", "jumprelu", SELECT_LAUNCHERS, JumpReLUSelect,
                     jumprelu_select_op)


def _masks(pre: torch.Tensor, indices: torch.Tensor, threshold: torch.Tensor, eps: float):
    """(theta at each entry, active, in band), all (..., w), in pre's dtype / bool."""
    t = threshold.detach().to(pre.dtype)[indices]
    half = eps / 2
    p = pre.detach()
    active = p > t
    band = (p > t - half) & (p < t + half)
    return t, active, band


class Gate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, indices, threshold, eps, ste_to_input, out_dtype):
        t, active, band = _masks(pre, indices, threshold, eps)
        ctx.save_for_backward(indices, t, active, band)
        ctx.eps, ctx.ste, ctx.d_sae, ctx.thr_dtype = eps, ste_to_input, threshold.shape[0], threshold.dtype
        ctx.pre_dtype = pre.dtype
        zero = torch.zeros((), dtype=pre.dtype, device=pre.device)
        # NaN stays NaN (pre * [pre > theta], as SAELens's JumpReLU), with no gradient
        return torch.where(active | torch.isnan(pre.detach()), pre.detach(), zero).to(out_dtype)

    @staticmethod
    def backward(ctx, grad):
        indices, t, active, band = ctx.saved_tensors
        g = grad.to(ctx.pre_dtype)
        ste = torch.where(band, g * t / ctx.eps, torch.zeros((), dtype=g.dtype, device=g.device))
        g_pre = g_thr = None
        if ctx.needs_input_grad[0]:
            g_pre = torch.where(active, g, torch.zeros((), dtype=g.dtype, device=g.device))
            if ctx.ste:
                g_pre = g_pre + ste
        if ctx.needs_input_grad[2]:
            g_thr = torch.zeros(ctx.d_sae, dtype=ctx.pre_dtype, device=g.device)
            g_thr.index_add_(0, indices.reshape(-1), -ste.reshape(-1))
            g_thr = g_thr.to(ctx.thr_dtype)
        return g_pre, None, g_thr, None, None, None


class StepL0(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, indices, threshold, eps, ste_to_input):
        _, active, band = _masks(pre, indices, threshold, eps)
        ctx.save_for_backward(indices, band)
        ctx.eps, ctx.ste, ctx.d_sae, ctx.thr_dtype = eps, ste_to_input, threshold.shape[0], threshold.dtype
        ctx.pre_dtype = pre.dtype
        return active.sum(-1).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        indices, band = ctx.saved_tensors
        g = grad.to(ctx.pre_dtype).unsqueeze(-1) / ctx.eps
        ste = torch.where(band, g, torch.zeros((), dtype=g.dtype, device=g.device))
        g_pre = g_thr = None
        if ctx.needs_input_grad[0] and ctx.ste:
            g_pre = ste
        if ctx.needs_input_grad[2]:
            g_thr = torch.zeros(ctx.d_sae, dtype=ctx.pre_dtype, device=g.device)
            g_thr.index_add_(0, indices.reshape(-1), -ste.reshape(-1))
            g_thr = g_thr.to(ctx.thr_dtype)
        return g_pre, None, g_thr, None, None


