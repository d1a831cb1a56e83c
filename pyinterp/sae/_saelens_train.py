"""SAELens 6 training SAEs (TopK, BatchTopK, Standard, JumpReLU) on their code's support.

:func:`training_forward_pass` computes what SAELens's ``training_forward_pass`` computes, term
by term (the same pre-activations from the same ops, the same latent selection, the same loss
formulas, the same dense ``feature_acts``/``hidden_pre`` outputs), but every gradient reaches
the weights through the selected entries only: the encoder's backward and the decoder (forward
and backward) run pyinterp's gather/scatter kernels instead of five dense GEMMs, and no dense
(N, d_sae) tensor is touched in the backward pass unless a loss reads ``hidden_pre`` densely
(JumpReLU's pre-activation loss), which then takes the dense path for that term only.

Only used for objects whose methods are SAELens's own (see ``acceleration._training_kind``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import torch

from pyinterp.sae import _sparse_grad as S


@dataclass
class Code:
    """One encoding: SAELens's dense outputs and the sparse values the losses use."""

    feature_acts: Optional[torch.Tensor]  # (N, d_sae) dense, differentiable
    hidden_pre: torch.Tensor  # (N, d_sae) dense, differentiable
    support: S.Support
    values: torch.Tensor  # (N, w) the code at the support (0 at padding), differentiable
    sae_in: torch.Tensor  # the processed input (minus b_dec ...) the encoder read
    pre: torch.Tensor  # (N, d_sae) x @ W_enc + b_enc, detached (for gathering more entries)
    pre_at: Optional[torch.Tensor] = None  # (N, w) pre-activations at the support (JumpReLU)
    threshold_at: Optional[torch.Tensor] = None  # (N, w) thresholds there (JumpReLU)


def _rectangle(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x)  # SAELens's rectangle window


class _JumpReLU(torch.autograd.Function):
    """SAELens's JumpReLU on gathered entries: the threshold is per entry (N, w), so its
    gradient is too (the gather's backward sums it per latent)."""

    @staticmethod
    def forward(ctx, x, threshold, bandwidth, ste_to_input):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth, ctx.ste_to_input = bandwidth, ste_to_input
        return (x * (x > threshold)).to(x)

    @staticmethod
    def backward(ctx, grad):
        x, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        ste = (threshold / bw) * _rectangle((x - threshold) / bw) * grad
        x_grad = (x > threshold) * grad
        if ctx.ste_to_input:
            x_grad = x_grad + ste
        return x_grad, -ste, None, None


class _Step(torch.autograd.Function):
    """SAELens's Step (the L0 count) on gathered entries, per-entry threshold gradient."""

    @staticmethod
    def forward(ctx, x, threshold, bandwidth, ste_to_input):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth, ctx.ste_to_input = bandwidth, ste_to_input
        return (x > threshold).to(x)

    @staticmethod
    def backward(ctx, grad):
        x, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        ste = (1.0 / bw) * _rectangle((x - threshold) / bw) * grad
        return (ste if ctx.ste_to_input else None), -ste, None, None


def _masked(t: torch.Tensor, support: S.Support) -> torch.Tensor:
    valid = support[1]
    return t if valid is None else t.masked_fill(~valid, 0)


def _batchtopk_support(hidden_pre: torch.Tensor, k: float) -> S.Support:
    """SAELens's BatchTopK selection: the int(k * N) largest ReLU'd entries of the batch."""
    n, d = hidden_pre.shape
    top = torch.topk(hidden_pre.relu().flatten(), int(k * n), dim=-1)
    flat = torch.sort(top.indices).values
    return S.support_from_coo(flat // d, flat % d, n)


def encode(sae, kind: str, x: torch.Tensor) -> Code:
    """SAELens's encode_with_hidden_pre for ``kind`` on 2-D input x, sparse underneath."""
    W_enc, b_enc, d_sae = sae.W_enc, sae.b_enc, sae.cfg.d_sae
    sae_in = sae.process_sae_in(x)
    pre = sae.hook_sae_acts_pre(S.dense_pre(sae_in, W_enc, b_enc))
    pre_d = pre.detach()
    hidden_pre = pre
    if kind in ("topk", "batchtopk"):
        norm = sae.W_dec.norm(dim=-1) if sae.cfg.rescale_acts_by_decoder_norm else None
        if norm is not None:
            hidden_pre = pre * norm  # differentiable output; backward only if read
        hp = hidden_pre.detach()
        if kind == "topk":
            idx = torch.topk(hp, k=sae.activation_fn.k, dim=-1, sorted=False).indices
            support: S.Support = (idx, None)
        else:
            support = _batchtopk_support(hp, sae.activation_fn.k)
        v = S.gathered_pre(sae_in, W_enc, b_enc, support[0], pre_d)
        if norm is not None:
            v = v * norm[support[0]]  # the same product as hidden_pre's entries
        values = _masked(v.relu(), support)
        code = Code(None, hidden_pre, support, values, sae_in, pre_d)
    elif kind == "standard":
        support = S.support_of(pre_d > 0)
        values = _masked(S.gathered_pre(sae_in, W_enc, b_enc, support[0], pre_d), support)
        code = Code(None, hidden_pre, support, values, sae_in, pre_d)
    else:  # jumprelu: the kept entries and the straight-through band around the threshold
        threshold = sae.threshold.to(pre.dtype)
        bw = sae.bandwidth
        # a superset of {pre > t} | {|pre - t| < bw / 2}; entries outside the band get rect 0
        support = S.support_of(pre_d > (threshold.detach() - 0.5 * bw * (1 + 1e-3)))
        p = _masked(S.gathered_pre(sae_in, W_enc, b_enc, support[0], pre_d), support)
        t = threshold[support[0]]
        values = _masked(_JumpReLU.apply(p, t, bw, sae.cfg.jumprelu_ste_to_input), support)
        code = Code(None, hidden_pre, support, values, sae_in, pre_d, p, t)
    code.feature_acts = sae.hook_sae_acts_post(S.scatter_dense(code.values, code.support, d_sae))
    return code


def _inv_norm(sae, kind: str):
    if kind in ("topk", "batchtopk") and sae.cfg.rescale_acts_by_decoder_norm:
        return 1 / sae.W_dec.norm(dim=-1)
    return None


def decode(sae, kind: str, code: Code) -> torch.Tensor:
    """SAELens's decode of the code, gathering the active rows of W_dec."""
    out = S.decode_values(code.values, code.support[0], sae.W_dec, sae.b_dec, _inv_norm(sae, kind))
    out = sae.hook_sae_recons(out)
    out = sae.run_time_activation_norm_fn_out(out)
    return sae.reshape_fn_out(out, sae.d_head)


def _topk_aux(sae, kind, sae_in, sae_out, code: Code, dead: Optional[torch.Tensor]):
    """SAELens's TopK auxiliary loss: the top ~d_in/2 dead latents reconstruct the residual."""
    if dead is None or (num_dead := int(dead.sum())) == 0:
        return sae_out.new_tensor(0.0)
    if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        # SAELens refuses this combination; let it say so
        return type(sae).calculate_topk_aux_loss(sae, sae_in=sae_in, sae_out=sae_out,
                                                 hidden_pre=code.hidden_pre, dead_neuron_mask=dead)
    residual = (sae_in - sae_out).detach()
    k_aux = sae_in.shape[-1] // 2
    scale = min(num_dead / k_aux, 1.0)
    k_aux = min(k_aux, num_dead)
    sel = torch.where(dead[None], code.hidden_pre.detach(), -torch.inf).topk(k_aux, sorted=False).indices
    vals = S.gathered_pre(code.sae_in, sae.W_enc, sae.b_enc, sel, code.pre)
    if sae.cfg.rescale_acts_by_decoder_norm:
        vals = vals * sae.W_dec.norm(dim=-1)[sel]  # hidden_pre's entries, as in encode
    recons = S.decode_values(vals, sel, sae.W_dec, None, _inv_norm(sae, kind))
    recons = sae.reshape_fn_out(recons, sae.d_head)
    return sae.cfg.aux_loss_coefficient * scale * (recons - residual).pow(2).sum(dim=-1).mean()


def _standard_aux(sae, step_input, code: Code) -> dict:
    weighted = code.values * sae.W_dec.norm(dim=1)[code.support[0]]  # padding stays 0
    sparsity = weighted.norm(p=sae.cfg.lp_norm, dim=-1)
    return {"l1_loss": (step_input.coefficients["l1"] * sparsity).mean()}


def _jumprelu_aux(sae, step_input, code: Code) -> dict:
    cfg = sae.cfg
    mode = cfg.jumprelu_sparsity_loss_mode
    W_dec_norm = sae.W_dec.norm(dim=1)
    if mode in ("step", "quadratic"):
        steps = _Step.apply(code.pre_at, code.threshold_at, sae.bandwidth, cfg.jumprelu_ste_to_input)
        l0 = _masked(steps, code.support).sum(dim=-1)
        if mode == "quadratic":
            if cfg.target_l0 is None:
                raise ValueError("cfg.target_l0 must be set for quadratic sparsity loss mode.")
            per_item = 2 / cfg.target_l0 * (l0 - cfg.target_l0) ** 2
        else:
            per_item = l0
    else:  # tanh (validated by SAELens's config)
        per_item = torch.tanh(cfg.jumprelu_tanh_scale * code.values
                              * W_dec_norm[code.support[0]]).sum(dim=-1)
    losses = {"l0_loss": (step_input.coefficients["l0"] * per_item).mean()}
    if cfg.pre_act_loss_coefficient is not None:  # reads hidden_pre densely (dead latents)
        calc = sys.modules[type(sae).calculate_aux_loss.__module__].calculate_pre_act_loss
        losses["pre_act_loss"] = calc(cfg.pre_act_loss_coefficient,
                                      sae.threshold.to(code.hidden_pre.dtype), code.hidden_pre,
                                      step_input.dead_neuron_mask, W_dec_norm)
    return losses


def training_forward_pass(sae, kind: str, step_input):
    """SAELens's ``training_forward_pass`` of ``kind`` (a ``TrainStepOutput``)."""
    if kind == "jumprelu":
        with torch.no_grad():  # SAELens projects the threshold first
            sae.threshold.data.clamp_(min=0.0)
    sae_in = step_input.sae_in
    code = encode(sae, kind, sae_in)
    sae_out = decode(sae, kind, code)
    mse_loss = sae.mse_loss_fn(sae_out, sae_in).sum(dim=-1).mean()
    if kind in ("topk", "batchtopk"):
        aux = {"auxiliary_reconstruction_loss": _topk_aux(sae, kind, sae_in, sae_out, code,
                                                          step_input.dead_neuron_mask)}
    elif kind == "standard":
        aux = _standard_aux(sae, step_input, code)
    else:
        aux = _jumprelu_aux(sae, step_input, code)
    total = mse_loss
    for value in aux.values():
        total = total + value
    out = sys.modules["sae_lens.saes.sae"].TrainStepOutput(
        sae_in=sae_in, sae_out=sae_out, feature_acts=code.feature_acts,
        hidden_pre=code.hidden_pre, loss=total, losses={"mse_loss": mse_loss, **aux})
    if kind == "batchtopk":
        _update_topk_threshold(sae, code)
        out.metrics["topk_threshold"] = sae.topk_threshold
    return out


@torch.no_grad()
def _update_topk_threshold(sae, code: Code) -> None:
    """SAELens's EMA of the smallest positive selected activation, from the sparse values."""
    vals = code.values
    positive = vals > 0
    if positive.any():
        lr = sae.cfg.topk_threshold_lr
        min_positive = vals[positive].min().to(sae.topk_threshold.dtype)
        sae.topk_threshold = (1 - lr) * sae.topk_threshold + lr * min_positive
