"""How a dictionary picks its active latents, and the matching sparsity penalty.

Every dictionary kind (SAE, transcoder, crosscoder, cross-layer transcoder, Matryoshka) has one
or more encoders ``pre = (x - b_center) @ W_enc + b_enc`` followed by one of:

- ``relu``: f = ReLU(pre); penalty lambda * sum_i f_i ||W_dec,i|| (decoder-norm weighted L1).
- ``topk``: the k largest per row (Gao et al. 2024); no penalty (AuxK against dead latents).
- ``batchtopk``: the k * N largest of the batch in training (Bussmann et al. 2024), a JumpReLU
  with one learned scalar threshold at inference.
- ``jumprelu``: f = pre [pre > theta] with per-latent thresholds trained by the straight-through
  estimator (Rajamanoharan et al. 2024) and an L0 penalty: ``step`` (lambda L0), ``quadratic``
  (Gemma Scope 2: lambda (2 / L0*) (L0 - L0*)^2 per row) or ``tanh`` (Anthropic:
  lambda sum_i tanh(c f_i ||W_dec,i||)). See docs/decisions/sae-jumprelu-threshold-grad.md.

Codes are sparse ``(values, indices)``; JumpReLU training codes also carry the selected
pre-activations (the active latents and the band around the threshold, -inf padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from pyinterp.sae import _kernels as K

KINDS = ("relu", "topk", "batchtopk", "jumprelu")
JUMPRELU_LOSSES = ("step", "quadratic", "tanh")


@dataclass
class Code:
    """A sparse code: values, indices (N, w); ``pre`` (N, w) float32 for JumpReLU training."""

    values: torch.Tensor
    indices: torch.Tensor
    pre: Optional[torch.Tensor] = None


def encode(kind: str, xn: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
           b_center: Optional[torch.Tensor], *, k=None, threshold: Optional[torch.Tensor] = None,
           cfg=None, train: bool = False, kw: Optional[dict] = None) -> Code:
    """One encoder's code. xn: (N, d) normalised input; threshold: JumpReLU (d_sae,) parameter
    or the BatchTopK scalar buffer; ``train`` selects the training-time rule (BatchTopK over
    the batch, JumpReLU with its band)."""
    kw = kw or {}
    if kind == "relu":
        v, i = K.threshold_encode(xn, W_enc, b_enc, b_center, 0.0, **kw)
        return Code(v, i)
    if kind == "topk":
        return Code(*K.topk_encode(xn, W_enc, b_enc, b_center, int(k), **kw))
    if kind == "batchtopk":
        if train:
            return Code(*K.batchtopk_encode(xn, W_enc, b_enc, b_center, batch_k(k), **kw))
        return Code(*_threshold_code(xn, W_enc, b_enc, b_center, threshold, kw))
    if kind == "jumprelu":
        if not train:
            return Code(*_threshold_code(xn, W_enc, b_enc, b_center, threshold, kw))
        pre, idx = K.jumprelu_select(xn, W_enc, b_enc, b_center, threshold, cfg.bandwidth, **kw)
        values = K.jumprelu_gate(pre, idx, threshold, cfg.bandwidth, ste_to_input=cfg.ste_to_input,
                                 out_dtype=xn.dtype)
        return Code(values, idx, pre)
    raise ValueError(f"activation must be one of {KINDS}, got {kind!r}")


def batch_k(k) -> int:
    if not float(k).is_integer():
        raise ValueError(f"BatchTopK training needs an integer k, got k={k} (SAELens allows a "
                         "fractional average k; round it)")
    return int(k)


def _threshold_code(xn, W_enc, b_enc, b_center, threshold, kw):
    """Inference JumpReLU (SAELens): ReLU(pre) [pre > theta], i.e. keep pre > max(theta, 0)."""
    d_sae = W_enc.shape[1]
    thr = threshold.detach().to(xn.dtype).clamp_min(0).expand(d_sae)
    return K.threshold_encode(xn, W_enc, b_enc, b_center, thr, **kw)


def sparsity(kind: str, code: Code, decoder_norms: Optional[torch.Tensor], cfg, scale: float,
             threshold: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The sparsity penalty of one code (mean over rows), times the warm-up ``scale``.

    decoder_norms: (d_sae,) per-latent decoder norm (summed over outputs for multi-output
    dictionaries), needed by ``relu`` and JumpReLU ``tanh``."""
    values = code.values
    cd = torch.float64 if values.dtype == torch.float64 else torch.float32
    if kind == "relu":
        weighted = values.to(cd) * decoder_norms[code.indices].to(cd)
        return cfg.l1_coefficient * scale * weighted.sum(-1).mean()
    if kind != "jumprelu" or code.pre is None:
        return values.new_zeros((), dtype=cd)
    mode = cfg.sparsity_loss
    if mode == "tanh":
        per_row = torch.tanh(cfg.tanh_scale * values.to(cd)
                             * decoder_norms[code.indices].to(cd)).sum(-1)
    else:
        l0 = K.jumprelu_l0(code.pre, code.indices, threshold, cfg.bandwidth,
                           ste_to_input=cfg.ste_to_input).to(cd)
        if mode == "quadratic":
            per_row = 2.0 / cfg.target_l0 * (l0 - cfg.target_l0).pow(2)
        else:
            per_row = l0
    return cfg.l0_coefficient * scale * per_row.mean() if per_row.numel() else per_row.sum()


@torch.no_grad()
def update_batchtopk_threshold(threshold: torch.Tensor, updates: torch.Tensor,
                               values: torch.Tensor, lr: float,
                               groups: Optional[torch.Tensor] = None) -> None:
    """EMA of the smallest positive selected activation (the BatchTopK inference threshold);
    no host sync. threshold, updates: buffers updated in place, scalars, or (L,) with
    ``groups`` (the encoder of each entry of ``values``, same shape) for one per encoder."""
    inf = torch.full(threshold.shape, float("inf"), device=values.device)
    v = torch.where(values > 0, values.float(), torch.full((), float("inf"), device=values.device))
    if groups is None:
        m = v.min() if v.numel() else inf
    else:
        m = inf.scatter_reduce(0, groups.reshape(-1), v.reshape(-1), "amin")
    ema = torch.where(updates == 0, m, (1 - lr) * threshold + lr * m)
    ok = torch.isfinite(m)
    threshold.copy_(torch.where(ok, ema, threshold))
    updates.add_(ok.to(torch.int64))


def auxk_loss(xn_target, x_hat, dead_mask, *, decode, encode_dead, k_aux: int,
              coefficient: float) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the top-k_aux dead latents reconstruct the main residual.

    ``encode_dead(mask_bias, k_aux) -> (values, indices)`` encodes with alive latents pushed
    to a huge negative bias (so none is picked with a positive value, no host sync);
    ``decode(values, indices)`` decodes without bias into the target's space. Scaled by
    min(#dead / k_aux, 1) (0 when none is dead)."""
    residual = (xn_target - x_hat).detach()
    v, i = encode_dead(k_aux)
    e_hat = decode(v, i)
    scale = (dead_mask.sum().to(torch.float32) / k_aux).clamp(max=1.0)
    err = (e_hat.float() - residual.float()).pow(2).sum(-1)
    return coefficient * scale * err.reshape(-1, err.shape[-1]).sum(0).mean() if err.dim() > 1 \
        else coefficient * scale * err.mean()


def dead_bias(dead_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 for dead latents, a huge negative number for alive ones (added to b_enc for AuxK)."""
    big = torch.finfo(dtype).max / 4
    return torch.where(dead_mask, torch.zeros((), dtype=dtype, device=dead_mask.device),
                       torch.full((), -big, dtype=dtype, device=dead_mask.device))
