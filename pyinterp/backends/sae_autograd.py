"""Autograd Functions of the sparse SAE ops shared by the GPU backends (triton, cuda).

A backend supplies four launchers and gets the four ops back (:func:`build`):

- ``topk(x, W_enc, b_enc, b_dec, k) -> (values, indices, mask)``
- ``gather(coef, idx, W, stride_l, stride_d, d, bias, out_dtype) -> (N, d)``:
  out[n] = bias + sum_j coef[n, j] * W[idx[n, j], :] with W addressed by (latent, feature)
  strides, so W_dec (d_sae, d) and W_enc (d, d_sae) are both read in place.
- ``gather_dot(g, idx, W, stride_l, stride_d) -> (N, k)``: dot(g[n], W[idx[n, j], :]).
- ``scatter_rows(coef, idx, X, d_sae, out_dtype, transposed, want_colsum, deterministic)``
  -> (out, colsum): out[l] = sum over entries of latent l of coef * X[row]; (d_sae, d) or
  transposed (d, d_sae).

Backward never builds an (N, d_sae) or (N, k, d) tensor: grad values by gathered dots, grad
W_dec / W_enc / b_enc by the scatter, grad x by a gather over W_enc's columns.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from pyinterp.backends import sae_select as S


def build(topk, gather, gather_dot, scatter_rows) -> SimpleNamespace:
    class _Encode(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W_enc, b_enc, b_dec, kind, arg, max_active):
            if kind == "topk":
                values, indices, mask = topk(x, W_enc, b_enc, b_dec, arg)
            elif kind == "threshold":
                values, indices, mask = S.threshold_chunked(x, W_enc, b_enc, b_dec, arg, max_active)
            else:
                values, indices, mask = S.batchtopk_chunked(x, W_enc, b_enc, b_dec, arg)
            ctx.has_b_dec = b_dec is not None
            ctx.save_for_backward(x, W_enc, b_dec if b_dec is not None else x.new_zeros(0),
                                  indices, mask)
            ctx.mark_non_differentiable(indices)
            return values, indices

        @staticmethod
        def backward(ctx, grad_values, grad_indices):
            x, W_enc, b_dec, indices, mask = ctx.saved_tensors
            cd = S.compute_dtype(x.dtype)
            d_in, d_sae = W_enc.shape
            g = (grad_values.to(cd) * mask).contiguous()
            need_x, need_W, need_be, need_bd = ctx.needs_input_grad[:4]
            need_bd = need_bd and ctx.has_b_dec
            gx = gW = gbe = gbd = None
            if need_W or need_be:
                if need_W:
                    xc = x.to(cd)
                    if ctx.has_b_dec:
                        xc = xc - b_dec.to(cd)
                    gW, colsum = scatter_rows(g, indices, xc.contiguous(), d_sae, W_enc.dtype,
                                              True, need_be, False)
                else:
                    colsum = torch.zeros(d_sae, dtype=cd, device=x.device).index_add_(
                        0, indices.reshape(-1), g.reshape(-1))
                if need_be:
                    gbe = colsum.to(W_enc.dtype)
            if need_x or need_bd:
                # grad (x - b_dec)[n] = sum_j g[n, j] W_enc[:, idx[n, j]]: W_enc's columns in place
                gxc = gather(g, indices, W_enc, W_enc.stride(1), W_enc.stride(0), d_in, None, cd)
                if need_x:
                    gx = gxc.to(x.dtype)
                if need_bd:
                    gbd = (-gxc.sum(0)).to(x.dtype)
            return gx, gW, gbe, gbd, None, None, None

    class _Decode(torch.autograd.Function):
        @staticmethod
        def forward(ctx, values, indices, W_dec, b_dec, deterministic):
            cd = S.compute_dtype(W_dec.dtype)
            coef = values.to(cd).contiguous()
            out = gather(coef, indices, W_dec, W_dec.stride(0), W_dec.stride(1), W_dec.shape[1],
                         None if b_dec is None else b_dec.contiguous(), W_dec.dtype)
            ctx.save_for_backward(coef, indices, W_dec)
            ctx.has_b_dec = b_dec is not None
            ctx.values_dtype = values.dtype
            ctx.deterministic = deterministic
            return out

        @staticmethod
        def backward(ctx, grad_out):
            coef, indices, W = ctx.saved_tensors
            g = grad_out.to(coef.dtype).contiguous()
            need_v, _, need_W, need_b = ctx.needs_input_grad[:4]
            gv = gW = gb = None
            if need_v:
                gv = gather_dot(g, indices, W, W.stride(0), W.stride(1)).to(ctx.values_dtype)
            if need_W:
                gW, _ = scatter_rows(coef, indices, g, W.shape[0], W.dtype, False, False,
                                     ctx.deterministic)
            if need_b and ctx.has_b_dec:
                gb = g.sum(0).to(W.dtype)
            return gv, None, gW, gb, None

    def topk_encode(x, W_enc, b_enc, b_dec, k):
        return _Encode.apply(x.contiguous(), W_enc, b_enc, b_dec, "topk", k, None)

    def threshold_encode(x, W_enc, b_enc, b_dec, threshold, max_active):
        return _Encode.apply(x.contiguous(), W_enc, b_enc, b_dec, "threshold", threshold,
                             max_active)

    def batchtopk_encode(x, W_enc, b_enc, b_dec, k):
        return _Encode.apply(x.contiguous(), W_enc, b_enc, b_dec, "batchtopk", k, None)

    def sparse_decode(values, indices, W_dec, b_dec, deterministic):
        return _Decode.apply(values, indices.contiguous(), W_dec, b_dec, deterministic)

    return SimpleNamespace(topk_encode=topk_encode, threshold_encode=threshold_encode,
                           batchtopk_encode=batchtopk_encode, sparse_decode=sparse_decode)
