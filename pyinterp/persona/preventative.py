"""Finetuning with and without preventative steering (Chen et al. 2025, section 5).

Preventative steering adds ``+alpha * v`` at a layer during finetuning (all tokens of the
teacher-forced forward) so that the optimiser need not move the model along the persona
direction to fit trait-laden data; the finetuned model is evaluated *without* the steering.
:func:`compare_finetuning` sets it against plain finetuning and against inference-time steering
(``alpha_inference * v`` added to the plainly finetuned model while it generates).
"""
from __future__ import annotations

import contextlib
import copy as _copy
from typing import Dict, Optional, Sequence

import torch

from pyinterp.persona._model import check_layer, check_vector
from pyinterp.persona.data import Sample, teacher_forced_batches
from pyinterp.persona.steering import steer


def response_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy on response tokens. batch: (B, 3, T) = tokens, attention mask,
    response mask (stacked so that the training loop can move one tensor)."""
    import torch.nn.functional as F

    tokens, attn, sel = batch[:, 0], batch[:, 1], batch[:, 2].bool()
    logits = model(tokens, attention_mask=attn)
    V = logits.shape[-1]
    lp = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), tokens[:, 1:].reshape(-1),
                         reduction="none").view(tokens.shape[0], -1)
    target = sel[:, 1:].to(lp.dtype)
    return (lp * target).sum() / target.sum().clamp_min(1)


def finetune(model, samples: Sequence[Sample], *, cfg=None, vector: Optional[torch.Tensor] = None,
             layer: Optional[int] = None, alpha: float = 0.0, copy: bool = True,
             batch_size: int = 8, out_dir=None):
    """Finetune on the responses of ``samples`` (a copy of ``model`` unless ``copy=False``);
    with ``vector`` and ``layer``, ``alpha * vector`` is added at that layer throughout training
    (preventative steering). Returns the finetuned model (hooks removed)."""
    from pyinterp.models.training import TrainConfig, train

    if not samples:
        raise ValueError("samples is empty: nothing to finetune on")
    m = _copy.deepcopy(model) if copy else model
    cfg = cfg or TrainConfig(max_steps=50, batch_size=batch_size, lr=1e-4, warmup_steps=5,
                             progress=False)
    batches = [torch.stack([t, a, s.long()], 1) for _, t, a, s in
               teacher_forced_batches(m, list(samples), cfg.batch_size)]
    ctx = contextlib.nullcontext()
    if vector is not None:
        if layer is None:
            raise ValueError("layer must be given with vector (preventative steering)")
        ctx = steer(m, check_vector(m, vector), check_layer(m, layer), alpha, positions="all")
    with ctx:
        train(m, lambda step: batches[step % len(batches)], cfg, loss_fn=response_loss,
              out_dir=out_dir)
    m.eval()
    return m


def compare_finetuning(model, samples: Sequence[Sample], pv, layer: int, trait, *, judge=None,
                       cfg=None, alpha_preventative: float = 5.0, alpha_inference: float = -1.5,
                       eval_questions: Optional[Sequence[str]] = None, **gen) -> Dict[str, dict]:
    """Trait expression and projection shift of: the base model, plain finetuning, finetuning
    with preventative steering (evaluated without it), and plain finetuning + inference-time
    steering. ``projection_shift`` = mean last-prompt-token projection onto the unit persona
    vector, minus the base model's (the paper's finetuning shift)."""
    from pyinterp.persona.evaluate import NEUTRAL_SYSTEM, last_prompt_projection, trait_score
    from pyinterp.persona.judge import LexiconJudge
    from pyinterp.persona.trait import load_trait

    trait = load_trait(trait)
    judge = judge or LexiconJudge()
    pv.check_model(model)
    layer = check_layer(model, layer)
    device = next(model.parameters()).device
    v = pv.vector(layer).to(device)
    qs = list(eval_questions or trait.eval_questions or trait.questions)
    prompts = [(NEUTRAL_SYSTEM, q) for q in qs]

    def measure(m, steering: float = 0.0):
        ctx = steer(m, v, layer, steering, positions="response") if steering else contextlib.nullcontext()
        with ctx:
            score, _ = trait_score(m, trait, judge, questions=qs, **gen)
        proj = last_prompt_projection(m, prompts, v, layer).mean()
        return score, float(proj)

    base_score, base_proj = measure(model)
    plain = finetune(model, samples, cfg=cfg)
    prevent = finetune(model, samples, cfg=cfg, vector=v, layer=layer, alpha=alpha_preventative)
    out = {"base": {"trait_score": base_score, "projection_shift": 0.0}}
    for name, m, s in (("plain_finetune", plain, 0.0), ("preventative_steering", prevent, 0.0),
                       ("inference_steering", plain, alpha_inference)):
        score, proj = measure(m, s)
        out[name] = {"trait_score": score, "projection_shift": proj - base_proj}
    out["preventative_steering"]["alpha"] = alpha_preventative
    out["inference_steering"]["alpha"] = alpha_inference
    return out
