"""The autograd Function of the multi-output sparse decode, shared by every kernel backend.

A backend supplies the launcher set (``pyinterp/backends/<name>/multi_decode.py``); every
tensor is contiguous, ``coef`` / ``g`` in the accumulation dtype (float32, float64 for
float64), ``dmap`` (S, G), ``lo`` / ``hi`` (G,) int64 on the tensors' device (the plan of
:mod:`pyinterp.ops.multi_decode`):

- ``multi_gather(coef, idx, W, bias, dmap, lo, hi) -> (G, N, d_out)`` in W's dtype:
  out[g, n] = bias[g] + sum over in-range entries j of coef[n, j] * W[p, i % d_src] with
  i = idx[n, j], p = dmap[i // d_src, g] >= 0, lo[g] <= i < hi[g]. W (P, d_src, d_out),
  bias (G, d_out) or None.
- ``multi_gather_dot(g, idx, W, dmap, lo, hi) -> (N, k)`` in the accumulation dtype:
  sum over the outputs an entry reaches of dot(g[out, n], W[p, i % d_src]) (grad values).
- ``multi_scatter(coef, idx, g, dmap, lo, hi, shape, out_dtype, deterministic)`` -> W's
  ``shape`` (P, d_src, d_out): grad W: W[p, r] += coef[e] * g[out, row(e)] over entries e of latent
  i = s * d_src + r and outputs with dmap[s, out] = p in range; rows never reached are zero.
  ``deterministic``: no float atomics (each latent sums its entries in a fixed order).

Backward never builds an (N, d_sae) or (N, k, d) tensor.
"""
from __future__ import annotations

import torch

from pyinterp._common import acc_dtype, device_guard

MULTI_DECODE_LAUNCHERS = ("multi_gather", "multi_gather_dot", "multi_scatter")


class MultiDecode(torch.autograd.Function):
    """(G, N, d_out) = the multi-output decode of (values, indices) through W_dec."""

    @staticmethod
    def forward(launchers, values, indices, W_dec, b_dec, dmap, lo, hi, deterministic):
        coef = values.to(acc_dtype(W_dec.dtype)).contiguous()
        with device_guard(W_dec):
            return launchers.multi_gather(coef, indices, W_dec, b_dec, dmap, lo, hi)

    @staticmethod
    def setup_context(ctx, inputs, output):
        launchers, values, indices, W_dec, b_dec, dmap, lo, hi, deterministic = inputs
        ctx.launchers = launchers
        ctx.save_for_backward(values, indices, W_dec, dmap, lo, hi)
        ctx.has_b_dec = b_dec is not None
        ctx.deterministic = deterministic

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, W, dmap, lo, hi = ctx.saved_tensors
        L = ctx.launchers
        cd = acc_dtype(W.dtype)
        g = grad_out.to(cd).contiguous()
        need_v, _, need_W, need_b = ctx.needs_input_grad[1:5]
        gv = gW = gb = None
        with device_guard(W):
            if need_v:
                gv = L.multi_gather_dot(g, indices, W, dmap, lo, hi).to(values.dtype)
            if need_W:
                gW = L.multi_scatter(values.to(cd).contiguous(), indices, g, dmap, lo, hi,
                                     tuple(W.shape), W.dtype, ctx.deterministic)
        if need_b and ctx.has_b_dec:
            gb = g.sum(1).to(W.dtype)
        return None, gv, None, gW, gb, None, None, None, None
