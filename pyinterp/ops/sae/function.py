"""The autograd Functions of the sparse SAE ops, shared by every kernel backend: one for the
encoders (top-k, threshold/JumpReLU, BatchTopK: they differ only in the selection launcher)
and one for the decoder.

A backend supplies the launcher set (``pyinterp/backends/<name>/sae.py``):

- ``topk(x, W_enc, b_enc, b_dec, k)``, ``threshold(x, W_enc, b_enc, b_dec, threshold,
  max_active)``, ``batchtopk(x, W_enc, b_enc, b_dec, k)`` -> ``(values, indices, mask)``:
  x (N, d_in) contiguous; values (N, width) in x's dtype, indices int64, mask (N, width) bool
  marking the entries that carry gradient. Selection follows the tie rule
  (docs/decisions/sae-topk-ties.md).
- ``gather(coef, idx, W, stride_l, stride_d, d, bias, out_dtype) -> (N, d)``:
  out[n] = bias + sum_j coef[n, j] * W[idx[n, j], :] with W addressed by (latent, feature)
  strides, so W_dec (d_sae, d) and W_enc (d, d_sae) are both read in place.
- ``gather_dot(g, idx, W, stride_l, stride_d) -> (N, k)``: dot(g[n], W[idx[n, j], :]).
- ``scatter_rows(coef, idx, X, d_sae, out_dtype, transposed, want_colsum, deterministic)``
  -> ``(out, colsum or None)``: out[l] = sum over entries of latent l of coef * X[row];
  (d_sae, d), or transposed (d, d_sae). ``deterministic``: no float atomics.

Backward never builds an (N, d_sae) or (N, k, d) tensor: grad values by gathered dots, grad
W_dec / W_enc / b_enc by the scatter, grad x by a gather over W_enc's columns.
"""
from __future__ import annotations

import torch

from pyinterp._common import acc_dtype, device_guard

BACKWARD_LAUNCHERS = ("gather", "scatter_rows")
ENCODE_LAUNCHERS = {kind: (kind,) + BACKWARD_LAUNCHERS for kind in ("topk", "threshold", "batchtopk")}
DECODE_LAUNCHERS = ("gather", "gather_dot", "scatter_rows")


class SparseEncode(torch.autograd.Function):
    """(values, indices, mask) of a sparse encoder ``kind`` ("topk": arg = k; "threshold":
    arg = threshold, with max_active; "batchtopk": arg = k). Gradients flow to x, W_enc, b_enc
    and b_dec through the entries ``mask`` marks; indices and mask are not differentiable."""

    @staticmethod
    def forward(launchers, x, W_enc, b_enc, b_dec, kind, arg, max_active):
        with device_guard(x):
            if kind == "threshold":
                return launchers.threshold(x, W_enc, b_enc, b_dec, arg, max_active)
            return getattr(launchers, kind)(x, W_enc, b_enc, b_dec, arg)

    @staticmethod
    def setup_context(ctx, inputs, output):
        launchers, x, W_enc, _b_enc, b_dec, *_ = inputs
        _, indices, mask = output
        ctx.launchers = launchers
        ctx.has_b_dec = b_dec is not None
        ctx.mark_non_differentiable(indices, mask)
        ctx.save_for_backward(x, W_enc, b_dec if b_dec is not None else x.new_zeros(0),
                              indices, mask)

    @staticmethod
    def backward(ctx, grad_values, _gi, _gm):
        x, W_enc, b_dec, indices, mask = ctx.saved_tensors
        L = ctx.launchers
        cd = acc_dtype(x.dtype)
        d_in, d_sae = W_enc.shape
        g = (grad_values.to(cd) * mask).contiguous()
        need_x, need_W, need_be, need_bd = ctx.needs_input_grad[1:5]
        need_bd = need_bd and ctx.has_b_dec
        gx = gW = gbe = gbd = None
        with device_guard(x):
            if need_W:
                xc = x.to(cd)
                if ctx.has_b_dec:
                    xc = xc - b_dec.to(cd)
                gW, colsum = L.scatter_rows(g, indices, xc.contiguous(), d_sae, W_enc.dtype, True,
                                            need_be, False)
                if need_be:
                    gbe = colsum.to(W_enc.dtype)
            elif need_be:
                gbe = torch.zeros(d_sae, dtype=cd, device=x.device).index_add_(
                    0, indices.reshape(-1), g.reshape(-1)).to(W_enc.dtype)
            if need_x or need_bd:
                # grad (x - b_dec)[n] = sum_j g[n, j] W_enc[:, idx[n, j]]: W_enc's columns in place
                gxc = L.gather(g, indices, W_enc, W_enc.stride(1), W_enc.stride(0), d_in, None, cd)
                if need_x:
                    gx = gxc.to(x.dtype)
                if need_bd:
                    gbd = (-gxc.sum(0)).to(x.dtype)
        return None, gx, gW, gbe, gbd, None, None, None


class SparseDecode(torch.autograd.Function):
    """out[n] = sum_j values[n, j] * W_dec[indices[n, j]] + b_dec, in W_dec's dtype."""

    @staticmethod
    def forward(launchers, values, indices, W_dec, b_dec, deterministic):
        coef = values.to(acc_dtype(W_dec.dtype)).contiguous()
        with device_guard(W_dec):
            return launchers.gather(coef, indices, W_dec, W_dec.stride(0), W_dec.stride(1),
                                    W_dec.shape[1], None if b_dec is None else b_dec.contiguous(),
                                    W_dec.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        launchers, values, indices, W_dec, b_dec, deterministic = inputs
        ctx.launchers = launchers
        ctx.save_for_backward(values, indices, W_dec)
        ctx.has_b_dec = b_dec is not None
        ctx.deterministic = deterministic

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, W = ctx.saved_tensors
        L = ctx.launchers
        cd = acc_dtype(W.dtype)
        g = grad_out.to(cd).contiguous()
        need_v, _, need_W, need_b = ctx.needs_input_grad[1:5]
        gv = gW = gb = None
        with device_guard(W):
            if need_v:
                gv = L.gather_dot(g, indices, W, W.stride(0), W.stride(1)).to(values.dtype)
            if need_W:
                gW, _ = L.scatter_rows(values.to(cd).contiguous(), indices, g, W.shape[0], W.dtype,
                                       False, False, ctx.deterministic)
        if need_b and ctx.has_b_dec:
            gb = g.sum(0).to(W.dtype)
        return None, gv, None, gW, gb, None
