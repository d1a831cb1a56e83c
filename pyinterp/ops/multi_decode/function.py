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

from typing import Optional

import torch

from pyinterp._common import acc_dtype, device_guard
from pyinterp.ops._dispatch import Op
from pyinterp.ops._library import custom_op, launchers, register_autograd, same_grads, same_inputs

MULTI_DECODE_LAUNCHERS = ("multi_gather", "multi_gather_dot", "multi_scatter")


class MultiDecode(torch.autograd.Function):
    """(G, N, d_out) = the multi-output decode of (values, indices) through W_dec."""

    @staticmethod
    def forward(ctx, values, indices, W_dec, b_dec, dmap, lo, hi, deterministic, launchers):
        inputs = (values, indices, W_dec, b_dec, dmap, lo, hi, deterministic, launchers)
        output = MultiDecode.compute(*inputs)
        MultiDecode.setup(ctx, inputs, output)
        return output

    @staticmethod
    def compute(values, indices, W_dec, b_dec, dmap, lo, hi, deterministic, launchers):
        coef = values.to(acc_dtype(W_dec.dtype)).contiguous()
        with device_guard(W_dec):
            return launchers.multi_gather(coef, indices, W_dec, b_dec, dmap, lo, hi)

    @staticmethod
    def setup(ctx, inputs, output):
        values, indices, W_dec, b_dec, dmap, lo, hi, deterministic, launchers = inputs
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
        need_v, _, need_W, need_b = ctx.needs_input_grad[:4]
        gv = gW = gb = None
        with device_guard(W):
            if need_v:
                gv = L.multi_gather_dot(g, indices, W, dmap, lo, hi).to(values.dtype)
            if need_W:
                gW = L.multi_scatter(values.to(cd).contiguous(), indices, g, dmap, lo, hi,
                                     tuple(W.shape), W.dtype, ctx.deterministic)
        if need_b and ctx.has_b_dec:
            gb = g.sum(1).to(W.dtype)
        return gv, None, gW, gb, None, None, None, None, None


# ---------------------------------------------------------------------------------------
# torch.library: torch.ops.pyinterp.multi_decode and its backward launchers as custom ops


@custom_op("multi_gather_dot", lambda g, idx, W, dmap, lo, hi, backend: g.new_empty(idx.shape))
def _multi_gather_dot(g: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, dmap: torch.Tensor,
                      lo: torch.Tensor, hi: torch.Tensor, backend: str) -> torch.Tensor:
    return launchers(backend, "multi_decode").multi_gather_dot(g, idx, W, dmap, lo, hi)


@custom_op("multi_scatter", lambda coef, idx, g, dmap, lo, hi, shape, out_dtype, deterministic,
           backend: g.new_empty(shape, dtype=out_dtype))
def _multi_scatter(coef: torch.Tensor, idx: torch.Tensor, g: torch.Tensor, dmap: torch.Tensor,
                   lo: torch.Tensor, hi: torch.Tensor, shape: list[int], out_dtype: torch.dtype,
                   deterministic: bool, backend: str) -> torch.Tensor:
    return launchers(backend, "multi_decode").multi_scatter(coef, idx, g, dmap, lo, hi,
                                                            tuple(shape), out_dtype, deterministic)


@custom_op("multi_decode", lambda values, indices, W_dec, b_dec, dmap, lo, hi, deterministic,
           backend: W_dec.new_empty(dmap.shape[1], values.shape[0], W_dec.shape[2]))
def multi_decode_op(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor,
                    b_dec: Optional[torch.Tensor], dmap: torch.Tensor, lo: torch.Tensor,
                    hi: torch.Tensor, deterministic: bool, backend: str) -> torch.Tensor:
    """(G, N, d_out); values / indices (N, k), everything contiguous (see the plan)."""
    return MultiDecode.compute(values, indices, W_dec, b_dec, dmap, lo, hi, deterministic,
                               launchers(backend, "multi_decode"))


register_autograd(multi_decode_op, MultiDecode,
                  {"multi_gather_dot": _multi_gather_dot, "multi_scatter": _multi_scatter},
                  same_inputs, same_grads)

MULTI_DECODE = Op("multi_decode", "multi_decode", MULTI_DECODE_LAUNCHERS, MultiDecode,
                  multi_decode_op)
