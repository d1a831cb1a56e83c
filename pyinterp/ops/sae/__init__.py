"""Sparse SAE ops (family ``sae``): encoders that return a sparse code ``(values, indices)``
and a decoder that gathers rows of W_dec, never building a dense (N, d_sae) code.

Weights use the SAELens layout: W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae,),
b_dec (d_in,). ``x`` may have leading dims: x (..., d_in) gives values/indices (..., k).
Every op is differentiable in x, W_enc, b_enc, b_dec (and values, W_dec for the decoder);
gradients flow only through selected entries, and values clamped at 0 get zero gradient.

Tie rule: latents are ordered by pre-activation, descending; exactly equal pre-activations
keep the smaller latent index first (docs/decisions/sae-topk-ties.md). Indices equal
``torch.topk``'s except among exact ties.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from pyinterp.ops import _validate as check
from pyinterp.ops._dispatch import Op, is_oracle, pick
from pyinterp.ops.sae.function import (
    BATCHTOPK_ENCODE,
    SPARSE_DECODE,
    THRESHOLD_ENCODE,
    TOPK_ENCODE,
    _check_indices,
)

INDEX_DTYPES = check.INDEX_DTYPES


def _encode(op: Op, kind: str, x2, W_enc, b_enc, b_dec, arg, max_active, backend):
    name, impl = pick(op, x2, W_enc, b_enc, b_dec, backend=backend)
    if is_oracle(name):
        extra = (arg, max_active) if kind == "threshold" else (arg,)
        return getattr(impl, op.name)(x2, W_enc, b_enc, b_dec, *extra)
    values, indices, _ = op.apply(name, impl, x2.contiguous(), W_enc, b_enc, b_dec, kind, arg,
                                  max_active)
    return values, indices


def _encoder_args(x, W_enc, b_enc, b_dec):
    """Validate the encoder weights; return (x2d, lead_shape, d_sae)."""
    check.tensor("x", x, min_ndim=1, nonempty_last=True)
    check.tensor("W_enc", W_enc, ndim=2)
    d_in = x.shape[-1]
    if W_enc.shape[0] != d_in:
        raise ValueError(
            f"W_enc must have shape (d_in, d_sae) = ({d_in}, d_sae) with d_in the last dim of x, "
            f"got {tuple(W_enc.shape)}")
    d_sae = W_enc.shape[1]
    if d_sae < 1:
        raise ValueError(f"W_enc must have d_sae >= 1 columns, got shape {tuple(W_enc.shape)}")
    check.tensor("b_enc", b_enc, ndim=1)
    check.shape("b_enc", b_enc, (d_sae,), "d_sae, the columns of W_enc")
    if b_dec is not None:
        check.tensor("b_dec", b_dec, ndim=1)
        check.shape("b_dec", b_dec, (d_in,), "d_in, the last dim of x")
    check.same_device(x=x, W_enc=W_enc, b_enc=b_enc, b_dec=b_dec)
    check.same_dtype(x=x, W_enc=W_enc, b_enc=b_enc, b_dec=b_dec)
    lead = x.shape[:-1]
    return x.reshape(-1, d_in), lead, d_sae


def _unflatten(lead, values, indices):
    return values.reshape(*lead, values.shape[-1]), indices.reshape(*lead, indices.shape[-1])


def topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                b_dec: Optional[torch.Tensor], k: int, *, backend: Optional[str] = None):
    """TopK SAE encoder: ReLU(TopK_k((x - b_dec) @ W_enc + b_enc)).

    x: (N, d_in) (or (..., d_in)); W_enc: (d_in, d_sae); b_enc: (d_sae,); b_dec: (d_in,) or
    None (no input centring); 1 <= k <= d_sae. Returns ``(values, indices)``: values (N, k) in
    x.dtype, sorted descending; indices (N, k) int64. The (N, d_sae) pre-activation is never
    held in full (CPU: row chunks; GPU: top-k fused into the GEMM epilogue).
    """
    x2, lead, d_sae = _encoder_args(x, W_enc, b_enc, b_dec)
    check.integer("k", k, low=1, high=d_sae)
    return _unflatten(lead, *_encode(TOPK_ENCODE, "topk", x2, W_enc, b_enc, b_dec, k, None,
                                     backend))


def threshold_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                     b_dec: Optional[torch.Tensor],
                     threshold: Union[float, torch.Tensor] = 0.0, *,
                     max_active: Optional[int] = None, backend: Optional[str] = None):
    """ReLU (``threshold=0``) or JumpReLU (``threshold`` a (d_sae,) tensor) encoder, sparse.

    Keeps pre-activations strictly greater than the threshold (JumpReLU outputs the
    pre-activation itself there). Each row's active set is sorted by the tie rule and padded
    with value 0 / index 0 to the batch's largest active count (at least 1), or to
    ``max_active`` (rows with more keep their ``max_active`` largest), so the code decodes
    through :func:`sparse_decode`. Without ``max_active`` the width depends on the data, which
    costs one device->host sync.

    Gradients flow to x, W_enc, b_enc, b_dec through the kept entries. **No gradient flows to
    ``threshold``** (a sparse code cannot carry the straight-through estimator's terms for
    inactive latents near the threshold; see docs/decisions/sae-jumprelu-threshold-grad.md).
    """
    x2, lead, d_sae = _encoder_args(x, W_enc, b_enc, b_dec)
    if isinstance(threshold, torch.Tensor):
        check.tensor("threshold", threshold, ndim=1)
        check.shape("threshold", threshold, (d_sae,), "d_sae, the columns of W_enc")
        check.same_device(x=x, threshold=threshold)
        threshold = threshold.detach()
    elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float or a (d_sae,) tensor, got {type(threshold).__name__}")
    else:
        threshold = float(threshold)
    if max_active is not None:
        check.integer("max_active", max_active, low=1)
    return _unflatten(lead, *_encode(THRESHOLD_ENCODE, "threshold", x2, W_enc, b_enc, b_dec,
                                     threshold, max_active, backend))


def batchtopk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                     b_dec: Optional[torch.Tensor], k: int, *, backend: Optional[str] = None):
    """BatchTopK encoder (Bussmann et al. 2024): keep the k*N largest ReLU pre-activations of
    the whole batch (ties: smaller (row, latent) in row-major order first), then per row the
    kept positive entries sorted by the tie rule, padded with value 0 / index 0 to the
    batch's largest count (at least 1; one device->host sync). x: (N, d_in) -> (N, width) each.
    """
    x2, lead, d_sae = _encoder_args(x, W_enc, b_enc, b_dec)
    check.integer("k", k, low=1, high=d_sae)
    return _unflatten(lead, *_encode(BATCHTOPK_ENCODE, "batchtopk", x2, W_enc, b_enc, b_dec, k,
                                     None, backend))


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor,
                  b_dec: Optional[torch.Tensor] = None, *, deterministic: bool = False,
                  check_indices: bool = True, backend: Optional[str] = None) -> torch.Tensor:
    """out[n] = sum_j values[n, j] * W_dec[indices[n, j]] + b_dec, without a dense code.

    values: (N, k) (or (..., k)) in W_dec's dtype; indices: same shape, int64 (int32 accepted);
    W_dec: (d_sae, d_in); b_dec: (d_in,) or None. Returns (N, d_in). Backward: grad values by
    gathered dot products, grad W_dec by a sparse scatter-add (``deterministic=True``: a
    sort-based segment sum without float atomics, bit-reproducible), grad b_dec.
    ``check_indices=False`` skips the range check (a device->host sync on GPU) for indices
    that come from this module's encoders.
    """
    check.sparse_code(values, indices)
    check.tensor("W_dec", W_dec, ndim=2)
    d_sae, d_in = W_dec.shape
    if d_sae < 1 or d_in < 1:
        raise ValueError(f"W_dec must have shape (d_sae, d_in) with both >= 1, got {tuple(W_dec.shape)}")
    if b_dec is not None:
        check.tensor("b_dec", b_dec, ndim=1)
        check.shape("b_dec", b_dec, (d_in,), "d_in, the columns of W_dec")
    check.same_device(values=values, indices=indices, W_dec=W_dec, b_dec=b_dec)
    check.same_dtype(values=values, W_dec=W_dec, b_dec=b_dec)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    if check_indices and not torch.compiler.is_compiling():  # compiled: the op checks instead
        _check_indices(indices, d_sae)
    lead = values.shape[:-1]
    k = values.shape[-1] if values.dim() else 1
    if k == 0:  # an empty code decodes to the bias
        out = (values.sum(-1, keepdim=True) * W_dec.new_zeros(d_in))
        return out + b_dec if b_dec is not None else out
    v2 = values.reshape(-1, k)
    i2 = indices.reshape(-1, k).to(torch.int64)
    name, impl = pick(SPARSE_DECODE, v2, i2, W_dec, b_dec, backend=backend)
    if is_oracle(name):
        out = impl.sparse_decode(v2, i2, W_dec, b_dec, deterministic)
    else:
        out = SPARSE_DECODE.apply(name, impl, v2, i2.contiguous(), W_dec, b_dec, deterministic,
                                  custom_extra=(check_indices,))
    return out.reshape(*lead, d_in)


def dense_from_sparse(values: torch.Tensor, indices: torch.Tensor, d_sae: int) -> torch.Tensor:
    """The dense code (..., d_sae) of a sparse one (padding entries add 0). Differentiable in
    values. For metrics and tests: it is the (N, d_sae) matrix the kernels avoid."""
    check.sparse_code(values, indices)
    check.integer("d_sae", d_sae, low=1)
    _check_indices(indices, d_sae)
    out = values.new_zeros(*values.shape[:-1], d_sae)
    return out.scatter_add(-1, indices.to(torch.int64), values)


def activation_counts(values: torch.Tensor, indices: torch.Tensor, d_sae: int, *,
                      check_indices: bool = True) -> torch.Tensor:
    """How many rows activate each latent (value != 0): (d_sae,) int64, on the device.
    Padding entries (value 0) do not count. ``check_indices=False`` skips the range check (a
    host sync) for indices from this package's encoders."""
    check.tensor("values", values, min_ndim=1)
    check.tensor("indices", indices, dtypes=INDEX_DTYPES)
    check.integer("d_sae", d_sae, low=1)
    if check_indices:
        _check_indices(indices, d_sae)
    fired = (values.detach() != 0).reshape(-1).to(torch.int64)
    counts = torch.zeros(d_sae, dtype=torch.int64, device=values.device)
    return counts.scatter_add_(0, indices.reshape(-1).to(torch.int64), fired)


def update_activity(counter: torch.Tensor, indices: torch.Tensor, d_sae: Optional[int] = None, *,
                    values: Optional[torch.Tensor] = None, increment: int = 1,
                    check_indices: bool = True) -> torch.Tensor:
    """Dead-latent bookkeeping on the device, without a host sync.

    counter: (d_sae,) integer or float tensor, "steps (or tokens) since each latent last
    fired"; it is increased by ``increment`` and reset to 0 for every latent present in
    ``indices`` (with a nonzero value when ``values`` is given, so padding does not count).
    Updated in place and returned. A latent is dead when its counter exceeds a window.
    ``check_indices=False`` skips the range check (a host sync) for indices from this
    package's encoders.
    """
    check.tensor("counter", counter, ndim=1,
                 dtypes=(torch.int64, torch.int32, torch.float32, torch.float64))
    check.tensor("indices", indices, dtypes=INDEX_DTYPES)
    if d_sae is not None and counter.shape[0] != d_sae:
        raise ValueError(f"counter must have shape ({d_sae},), got {tuple(counter.shape)}")
    n = counter.shape[0]
    if check_indices:
        _check_indices(indices, n)
    if values is not None:
        check.tensor("values", values)
        fired = (values.detach() != 0).reshape(-1).to(torch.int64)
    else:
        fired = torch.ones(indices.numel(), dtype=torch.int64, device=indices.device)
    hits = torch.zeros(n, dtype=torch.int64, device=counter.device)
    hits.scatter_add_(0, indices.reshape(-1).to(torch.int64), fired)
    counter.add_(increment)
    counter.masked_fill_(hits > 0, 0)
    return counter
