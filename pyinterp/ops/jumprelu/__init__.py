"""JumpReLU training ops (family ``jumprelu``): the sparse band selection and the two
straight-through estimators of Rajamanoharan et al. 2024 (rectangle kernel, bandwidth eps).

    pre, idx = jumprelu_select(x, W_enc, b_enc, b_dec, theta, eps)   # active + band, sparse
    f = jumprelu_gate(pre, idx, theta, eps)        # pre where pre > theta, else 0
    l0 = jumprelu_l0(pre, idx, theta, eps)         # (N,) active counts, STE to theta

Gradients (SAELens's JumpReLU / Step functions, restricted to the selected entries, which
hold every entry with a non-zero term):

- gate: d f / d pre = [pre > theta]; d f / d theta_i = -(theta_i / eps) [|pre - theta_i| < eps/2]
- l0:   d l0 / d theta_i = -(1 / eps) [|pre - theta_i| < eps/2]; nothing to pre
- ``ste_to_input=True`` (Anthropic's variant) also passes the kernel term to pre with the
  opposite sign: + (theta_i / eps) for the gate, + (1 / eps) for l0.

No (N, d_sae) tensor is kept for backward: the band is part of the sparse code, padding
entries have pre = -inf (never active, never in the band).
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp.ops import _validate as check
from pyinterp.ops._dispatch import is_oracle, pick
from pyinterp.ops.jumprelu.function import JUMPRELU_SELECT, Gate, StepL0
from pyinterp.ops.sae import _encoder_args


def _threshold(threshold, d_sae: int, device) -> torch.Tensor:
    check.tensor("threshold", threshold, ndim=1)
    check.shape("threshold", threshold, (d_sae,), "d_sae, one threshold per latent")
    if threshold.device != device:
        raise ValueError(f"threshold is on {threshold.device}, the other tensors on {device}")
    return threshold


def _bandwidth(bandwidth) -> float:
    return check.positive_float("bandwidth", bandwidth)


def jumprelu_select(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                    b_dec: Optional[torch.Tensor], threshold: torch.Tensor, bandwidth: float, *,
                    max_active: Optional[int] = None, backend: Optional[str] = None):
    """The latents with pre > theta - eps/2 (the active ones and the band), sparse.

    x: (..., d_in); W_enc: (d_in, d_sae); b_enc: (d_sae,); b_dec: (d_in,) or None (no
    centring); threshold: (d_sae,) (any float dtype; no gradient through this op). Returns
    ``(pre, indices)``, each (..., w): the pre-activations (x - b_dec) @ W_enc + b_enc of the
    selected latents in float32 (float64 for float64 x), sorted by the tie rule, padded with
    pre = -inf / index 0 to the batch's largest count (one device->host sync) or to
    ``max_active`` (rows with more keep their largest). Differentiable in x, W_enc, b_enc,
    b_dec through the selected entries.
    """
    x2, lead, d_sae = _encoder_args(x, W_enc, b_enc, b_dec)
    thr = _threshold(threshold, d_sae, x.device).detach()
    eps = _bandwidth(bandwidth)
    if max_active is not None:
        check.integer("max_active", max_active, low=1)
    name, impl = pick(JUMPRELU_SELECT, x2, W_enc, b_enc, b_dec, backend=backend)
    if is_oracle(name):
        pre, idx = impl.jumprelu_select(x2, W_enc, b_enc, b_dec, thr, eps, max_active)
    else:
        pre, idx, _ = JUMPRELU_SELECT.apply(name, impl, x2.contiguous(), W_enc, b_enc, b_dec, thr,
                                            eps, max_active)
    return pre.reshape(*lead, pre.shape[-1]), idx.reshape(*lead, idx.shape[-1])


def _check_code(pre, indices, threshold):
    check.tensor("pre", pre, min_ndim=1)
    check.tensor("indices", indices, dtypes=(torch.int64,))
    if tuple(pre.shape) != tuple(indices.shape):
        raise ValueError(f"indices must have the shape of pre {tuple(pre.shape)}, got "
                         f"{tuple(indices.shape)}")
    check.tensor("threshold", threshold, ndim=1)
    check.same_device(pre=pre, indices=indices, threshold=threshold)


def jumprelu_gate(pre: torch.Tensor, indices: torch.Tensor, threshold: torch.Tensor,
                  bandwidth: float, *, ste_to_input: bool = False,
                  out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """JumpReLU values f = pre * [pre > theta] of a selected code (from
    :func:`jumprelu_select`), in ``out_dtype`` (default pre's dtype). Differentiable in pre
    and threshold (straight-through estimator, see the module docstring)."""
    _check_code(pre, indices, threshold)
    return Gate.apply(pre, indices, threshold, _bandwidth(bandwidth), bool(ste_to_input),
                       out_dtype or pre.dtype)


def jumprelu_l0(pre: torch.Tensor, indices: torch.Tensor, threshold: torch.Tensor,
                bandwidth: float, *, ste_to_input: bool = False) -> torch.Tensor:
    """Active latents per row, sum_i H(pre_i - theta_i): (...,) in pre's dtype, with the
    step function's straight-through gradient to threshold (and to pre if ``ste_to_input``)."""
    _check_code(pre, indices, threshold)
    return StepL0.apply(pre, indices, threshold, _bandwidth(bandwidth), bool(ste_to_input))
