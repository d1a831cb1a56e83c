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

from typing import Optional

import torch

from pyinterp._common import acc_dtype, device_guard
from pyinterp.ops._dispatch import Op
from pyinterp.ops._library import custom_op, launchers, register_autograd

BACKWARD_LAUNCHERS = ("gather", "scatter_rows")
ENCODE_LAUNCHERS = {kind: (kind,) + BACKWARD_LAUNCHERS for kind in ("topk", "threshold", "batchtopk")}
DECODE_LAUNCHERS = ("gather", "gather_dot", "scatter_rows")


class SparseEncode(torch.autograd.Function):
    """(values, indices, mask) of a sparse encoder ``kind`` ("topk": arg = k; "threshold":
    arg = threshold, with max_active; "batchtopk": arg = k). Gradients flow to x, W_enc, b_enc
    and b_dec through the entries ``mask`` marks; indices and mask are not differentiable."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, kind, arg, max_active, launchers):
        output = SparseEncode.compute(x, W_enc, b_enc, b_dec, kind, arg, max_active, launchers)
        SparseEncode.setup(ctx, (x, W_enc, b_enc, b_dec, kind, arg, max_active, launchers), output)
        return output

    @staticmethod
    def compute(x, W_enc, b_enc, b_dec, kind, arg, max_active, launchers):
        with device_guard(x):
            if kind == "threshold":
                return launchers.threshold(x, W_enc, b_enc, b_dec, arg, max_active)
            return getattr(launchers, kind)(x, W_enc, b_enc, b_dec, arg)

    @staticmethod
    def setup(ctx, inputs, output):
        x, W_enc, _b_enc, b_dec, *_, launchers = inputs
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
        need_x, need_W, need_be, need_bd = ctx.needs_input_grad[:4]
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
        return gx, gW, gbe, gbd, None, None, None, None


class SparseDecode(torch.autograd.Function):
    """out[n] = sum_j values[n, j] * W_dec[indices[n, j]] + b_dec, in W_dec's dtype."""

    @staticmethod
    def forward(ctx, values, indices, W_dec, b_dec, deterministic, launchers):
        output = SparseDecode.compute(values, indices, W_dec, b_dec, deterministic, launchers)
        SparseDecode.setup(ctx, (values, indices, W_dec, b_dec, deterministic, launchers), output)
        return output

    @staticmethod
    def compute(values, indices, W_dec, b_dec, deterministic, launchers):
        coef = values.to(acc_dtype(W_dec.dtype)).contiguous()
        with device_guard(W_dec):
            return launchers.gather(coef, indices, W_dec, W_dec.stride(0), W_dec.stride(1),
                                    W_dec.shape[1], None if b_dec is None else b_dec.contiguous(),
                                    W_dec.dtype)

    @staticmethod
    def setup(ctx, inputs, output):
        values, indices, W_dec, b_dec, deterministic, launchers = inputs
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
        need_v, _, need_W, need_b = ctx.needs_input_grad[:4]
        gv = gW = gb = None
        with device_guard(W):
            if need_v:
                gv = L.gather_dot(g, indices, W, W.stride(0), W.stride(1)).to(values.dtype)
            if need_W:
                gW, _ = L.scatter_rows(values.to(cd).contiguous(), indices, g, W.shape[0], W.dtype,
                                       False, False, ctx.deterministic)
        if need_b and ctx.has_b_dec:
            gb = g.sum(0).to(W.dtype)
        return gv, None, gW, gb, None, None


# ---------------------------------------------------------------------------------------
# torch.library: torch.ops.pyinterp.{topk,threshold,batchtopk}_encode / sparse_decode, and
# the backward launchers as custom ops


@custom_op("sae_gather", lambda coef, idx, W, stride_l, stride_d, d, bias, out_dtype, backend:
           coef.new_empty(idx.shape[0], d, dtype=out_dtype))
def _gather(coef: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, stride_l: int, stride_d: int,
            d: int, bias: Optional[torch.Tensor], out_dtype: torch.dtype, backend: str
            ) -> torch.Tensor:
    return launchers(backend, "sae").gather(coef, idx, W, stride_l, stride_d, d, bias, out_dtype)


@custom_op("sae_gather_dot", lambda g, idx, W, stride_l, stride_d, backend:
           g.new_empty(idx.shape))
def _gather_dot(g: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, stride_l: int,
                stride_d: int, backend: str) -> torch.Tensor:
    return launchers(backend, "sae").gather_dot(g, idx, W, stride_l, stride_d)


def _scatter_rows_fake(coef, idx, X, d_sae, out_dtype, transposed, want_colsum, deterministic,
                       backend):
    d = X.shape[1]
    out = X.new_empty((d, d_sae) if transposed else (d_sae, d), dtype=out_dtype)
    return out, coef.new_empty(d_sae if want_colsum else 0)


@custom_op("sae_scatter_rows", _scatter_rows_fake)
def _scatter_rows(coef: torch.Tensor, idx: torch.Tensor, X: torch.Tensor, d_sae: int,
                  out_dtype: torch.dtype, transposed: bool, want_colsum: bool, deterministic: bool,
                  backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    out, colsum = launchers(backend, "sae").scatter_rows(coef, idx, X, d_sae, out_dtype,
                                                         transposed, want_colsum, deterministic)
    return out, coef.new_empty(0) if colsum is None else colsum


BACKWARD_OPS = {"gather": _gather, "gather_dot": _gather_dot, "scatter_rows": _scatter_rows}


def _code_fake(x, width):
    n = x.shape[0]
    return (x.new_empty(n, width), x.new_empty(n, width, dtype=torch.int64),
            x.new_empty(n, width, dtype=torch.bool))


def _dynamic_width():
    """The data-dependent width of a threshold / BatchTopK code (an unbacked size)."""
    return torch.library.get_ctx().new_dynamic_size(min=1)


@custom_op("topk_encode", lambda x, W_enc, b_enc, b_dec, k, backend: _code_fake(x, k))
def topk_encode_op(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                   b_dec: Optional[torch.Tensor], k: int, backend: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, indices, mask) of the top-k encoder; x (N, d_in) contiguous."""
    return SparseEncode.compute(x, W_enc, b_enc, b_dec, "topk", k, None, launchers(backend, "sae"))


@custom_op("threshold_encode", lambda x, W_enc, b_enc, b_dec, threshold, threshold_value,
           max_active, backend: _code_fake(x, max_active or _dynamic_width()))
def threshold_encode_op(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                        b_dec: Optional[torch.Tensor], threshold: Optional[torch.Tensor],
                        threshold_value: float, max_active: Optional[int], backend: str
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, indices, mask) of the ReLU / JumpReLU encoder: ``threshold`` (d_sae,), or the
    scalar ``threshold_value`` when it is None."""
    thr = threshold_value if threshold is None else threshold
    return SparseEncode.compute(x, W_enc, b_enc, b_dec, "threshold", thr, max_active,
                                launchers(backend, "sae"))


@custom_op("batchtopk_encode", lambda x, W_enc, b_enc, b_dec, k, backend:
           _code_fake(x, _dynamic_width()))
def batchtopk_encode_op(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                        b_dec: Optional[torch.Tensor], k: int, backend: str
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, indices, mask) of the BatchTopK encoder."""
    return SparseEncode.compute(x, W_enc, b_enc, b_dec, "batchtopk", k, None,
                                launchers(backend, "sae"))


def _check_indices(indices: torch.Tensor, d_sae: int) -> None:
    if indices.numel() == 0:
        return
    bad = (indices < 0) | (indices >= d_sae)
    if bool(bad.any()):
        first = int(indices[bad].flatten()[0])
        raise ValueError(f"indices must lie in [0, {d_sae}) (the rows of W_dec), found {first}")


@custom_op("sparse_decode", lambda values, indices, W_dec, b_dec, deterministic, check_indices,
           backend: W_dec.new_empty(values.shape[0], W_dec.shape[1]))
def sparse_decode_op(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor,
                     b_dec: Optional[torch.Tensor], deterministic: bool, check_indices: bool,
                     backend: str) -> torch.Tensor:
    """out (N, d_in); values / indices (N, k), indices int64 contiguous. ``check_indices``
    checks the range here, at run time (a compiled graph cannot branch on the data)."""
    if check_indices:
        _check_indices(indices, W_dec.shape[0])
    return SparseDecode.compute(values, indices, W_dec, b_dec, deterministic,
                                launchers(backend, "sae"))


def _encode_inputs(kind):
    def to_inputs(inputs, launcher_set):
        x, W_enc, b_enc, b_dec, *rest = inputs
        if kind == "threshold":
            thr, thr_value, max_active = rest
            return (x, W_enc, b_enc, b_dec, kind, thr_value if thr is None else thr, max_active,
                    launcher_set)
        return (x, W_enc, b_enc, b_dec, kind, rest[0], None, launcher_set)
    return to_inputs


def _encode_grads(n_extra):
    return lambda grads: (*grads[:4], *(None,) * n_extra)


register_autograd(topk_encode_op, SparseEncode, BACKWARD_OPS, _encode_inputs("topk"),
                  _encode_grads(1))
register_autograd(threshold_encode_op, SparseEncode, BACKWARD_OPS, _encode_inputs("threshold"),
                  _encode_grads(3))
register_autograd(batchtopk_encode_op, SparseEncode, BACKWARD_OPS, _encode_inputs("batchtopk"),
                  _encode_grads(1))
register_autograd(sparse_decode_op, SparseDecode, BACKWARD_OPS,
                  lambda inputs, ls: (*inputs[:5], ls), lambda grads: (*grads[:5], None))


def _threshold_args(x, W_enc, b_enc, b_dec, kind, thr, max_active):
    tensor = isinstance(thr, torch.Tensor)
    return x, W_enc, b_enc, b_dec, thr if tensor else None, 0.0 if tensor else thr, max_active


TOPK_ENCODE = Op("topk_encode", "sae", ENCODE_LAUNCHERS["topk"], SparseEncode, topk_encode_op,
                 lambda x, W, be, bd, kind, k, max_active: (x, W, be, bd, k))
THRESHOLD_ENCODE = Op("threshold_encode", "sae", ENCODE_LAUNCHERS["threshold"], SparseEncode,
                      threshold_encode_op, _threshold_args)
BATCHTOPK_ENCODE = Op("batchtopk_encode", "sae", ENCODE_LAUNCHERS["batchtopk"], SparseEncode,
                      batchtopk_encode_op, lambda x, W, be, bd, kind, k, max_active: (x, W, be, bd, k))
SPARSE_DECODE = Op("sparse_decode", "sae", DECODE_LAUNCHERS, SparseDecode, sparse_decode_op)
