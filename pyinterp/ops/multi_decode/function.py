"""The autograd Function of the multi-output sparse decode, shared by every kernel backend.

A backend supplies the launcher set (``pyinterp/backends/<name>/multi_decode.py``); every
tensor is contiguous, ``coef`` / ``g`` in the accumulation dtype (float32, float64 for
float64), ``dmap`` (S, G), ``lo`` / ``hi`` (G,) int64 on the tensors' device (the plan of
:mod:`pyinterp.ops.multi_decode`):

- ``multi_gather(coef, idx, W, bias, dmap, lo, hi) -> (G, N, d_out)`` in W's dtype:
  out[g, n] = bias[g] + sum over in-range entries j of coef[n, j] * W[p, i % d_src] with
  i = idx[n, j], p = dmap[i // d_src, g] >= 0, lo[g] <= i < hi[g]. W (P, d_src, d_out),
  bias (G, d_out) or None.
- ``multi_backward(coef, idx, g, W, dmap, lo, hi, need_values, need_W, deterministic)`` ->
  ``(grad_values or None, grad_W or None)``, g (G, N, d_out) the outputs' gradient:
  grad_values (N, k) in the accumulation dtype, sum over the outputs an entry reaches of
  dot(g[out, n], W[p, i % d_src]); grad_W in W's shape and dtype, W[p, r] collecting
  coef[e] * g[out, row(e)] over the entries e of latent i = s * d_src + r and the outputs
  with dmap[s, out] = p in range (rows never reached are zero). ``deterministic``: no float
  atomics (each latent sums its entries in a fixed order). One launcher for both, so a
  backend can read each output-gradient row once for both products (the cpu backend does).

Backward never builds an (N, d_sae) or (N, k, d) tensor.
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp._common import acc_dtype, device_guard
from pyinterp.ops._dispatch import Op
from pyinterp.ops._library import custom_op, launchers, register_autograd, same_grads, same_inputs

MULTI_DECODE_LAUNCHERS = ("multi_gather", "multi_backward")


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
        if need_v or need_W:
            with device_guard(W):
                gv, gW = L.multi_backward(values.to(cd).contiguous(), indices, g, W, dmap, lo, hi,
                                          need_v, need_W, ctx.deterministic)
            gv = gv.to(values.dtype) if need_v else None
            gW = gW if need_W else None
        if need_b and ctx.has_b_dec:
            gb = g.sum(1).to(W.dtype)
        return gv, None, gW, gb, None, None, None, None, None


# ---------------------------------------------------------------------------------------
# torch.library: torch.ops.pyinterp.multi_decode and its backward launchers as custom ops


def _backward_fake(coef, idx, g, W, dmap, lo, hi, need_values, need_W, deterministic, backend):
    return (coef.new_empty(idx.shape if need_values else (0,)),
            W.new_empty(W.shape if need_W else (0,)))


@custom_op("multi_backward", _backward_fake)
def _multi_backward(coef: torch.Tensor, idx: torch.Tensor, g: torch.Tensor, W: torch.Tensor,
                    dmap: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, need_values: bool,
                    need_W: bool, deterministic: bool, backend: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    gv, gW = launchers(backend, "multi_decode").multi_backward(
        coef, idx, g, W, dmap, lo, hi, need_values, need_W, deterministic)
    # a custom op returns tensors: empty ones stand for the gradients not asked for
    return (gv if gv is not None else coef.new_empty(0),
            gW if gW is not None else W.new_empty(0))


@custom_op("multi_decode", lambda values, indices, W_dec, b_dec, dmap, lo, hi, deterministic,
           backend: W_dec.new_empty(dmap.shape[1], values.shape[0], W_dec.shape[2]))
def multi_decode_op(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor,
                    b_dec: Optional[torch.Tensor], dmap: torch.Tensor, lo: torch.Tensor,
                    hi: torch.Tensor, deterministic: bool, backend: str) -> torch.Tensor:
    """(G, N, d_out); values / indices (N, k), everything contiguous (see the plan)."""
    return MultiDecode.compute(values, indices, W_dec, b_dec, dmap, lo, hi, deterministic,
                               launchers(backend, "multi_decode"))


register_autograd(multi_decode_op, MultiDecode,
                  {"multi_backward": _multi_backward},
                  same_inputs, same_grads)

MULTI_DECODE = Op("multi_decode", "multi_decode", MULTI_DECODE_LAUNCHERS, MultiDecode,
                  multi_decode_op)
