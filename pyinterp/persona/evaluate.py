"""Using persona vectors: layer choice by steering effect, monitoring by the last prompt token's
projection, and data screening by projection difference (Chen et al. 2025, sections 3-5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from pyinterp.persona._model import check_layer, check_vector
from pyinterp.persona.activations import projections
from pyinterp.persona.data import Sample, chat_prompt, encode, generate_responses, tokenizer_of
from pyinterp.persona.extract import PersonaVectors
from pyinterp.persona.judge import Judge, LexiconJudge, score_all
from pyinterp.persona.steering import steer
from pyinterp.persona.trait import TraitSpec, load_trait

NEUTRAL_SYSTEM = "You are a helpful assistant."


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two (N,) tensors (computed on their device, one number returned)."""
    x, y = x.double().flatten(), y.double().to(x.device).flatten()
    if x.numel() != y.numel() or x.numel() < 2:
        raise ValueError(f"pearson needs two series of equal length >= 2, got {x.numel()} and {y.numel()}")
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc @ yc) / (xc.norm() * yc.norm()).clamp_min(1e-300))


def trait_score(model, trait: TraitSpec, judge: Judge, *, questions: Optional[Sequence[str]] = None,
                system: str = NEUTRAL_SYSTEM, tokenizer=None, n_samples: int = 1,
                max_new_tokens: int = 32, temperature: float = 1.0, batch_size: int = 16,
                seed: int = 0) -> Tuple[float, List[Sample]]:
    """Mean judged trait expression of the model's responses to ``questions`` (default: the
    trait's evaluation questions), with whatever hooks are active on the model."""
    qs = list(questions or trait.eval_questions or trait.questions)
    samples = generate_responses(model, [(system, q) for q in qs], tokenizer=tokenizer,
                                 n_samples=n_samples, max_new_tokens=max_new_tokens,
                                 temperature=temperature, batch_size=batch_size, seed=seed)
    scores = score_all(judge, [(s.question, s.text) for s in samples], trait, "judge")
    for s, v in zip(samples, scores):
        s.meta["trait_score"] = v
    return sum(scores) / len(scores), samples


def steering_effect(model, pv: PersonaVectors, trait, *, judge: Optional[Judge] = None,
                    layers: Optional[Sequence[int]] = None, alpha: float = 2.0,
                    positions: str = "response", **gen) -> Dict[str, object]:
    """Trait score when steering with ``alpha * v_l`` at each candidate layer vs unsteered.
    Returns {"baseline": score, "scores": {layer: score}, "best_layer": layer}."""
    trait = load_trait(trait)
    judge = judge or LexiconJudge()
    pv.check_model(model)
    cand = [check_layer(model, l) for l in (layers if layers is not None else pv.layers)]
    base, _ = trait_score(model, trait, judge, **gen)
    scores = {}
    for layer in cand:
        with steer(model, pv.vector(layer).to(next(model.parameters()).device), layer, alpha,
                   positions=positions):
            scores[layer], _ = trait_score(model, trait, judge, **gen)
    best = max(scores, key=lambda l: (scores[l] - base) * (1 if alpha >= 0 else -1))
    return {"baseline": base, "scores": scores, "best_layer": best, "alpha": alpha}


def choose_layer(model, pv: PersonaVectors, trait, **kwargs) -> int:
    """The layer whose persona vector, added with ``alpha``, moves the trait score most."""
    return steering_effect(model, pv, trait, **kwargs)["best_layer"]


@dataclass
class MonitorResult:
    projections: torch.Tensor  # (N,) last-prompt-token projections
    scores: torch.Tensor  # (N,) judged trait expression of the responses
    correlation: float
    samples: List[Sample]


def last_prompt_projection(model, prompts: Sequence[Union[Sample, Tuple[str, str]]],
                           vector: torch.Tensor, layer: int, *, tokenizer=None,
                           batch_size: int = 16) -> torch.Tensor:
    """(N,) projection a.v/|v| of the last prompt token at ``layer`` for each prompt
    ((system, question) pairs or samples), batched over variable-length prompts."""
    layer = check_layer(model, layer)
    vector = check_vector(model, vector)
    samples = [p if isinstance(p, Sample) else
               Sample(chat_prompt(tokenizer_of(model, tokenizer), p[0], p[1]), []) for p in prompts]
    return projections(model, samples, vector, [layer], reduce="last", prompt_only=True,
                       batch_size=batch_size)[0, :, 0]


def monitor(model, pv: PersonaVectors, trait, layer: int, *, judge: Optional[Judge] = None,
            system_prompts: Optional[Sequence[str]] = None, questions: Optional[Sequence[str]] = None,
            tokenizer=None, batch_size: int = 16, **gen) -> MonitorResult:
    """The paper's monitoring experiment: over system prompts (default: the trait's positive and
    negative prompts and a neutral one) x evaluation questions, correlate the last prompt
    token's projection onto the persona vector with the judged trait score of the response."""
    trait = load_trait(trait)
    judge = judge or LexiconJudge()
    pv.check_model(model)
    systems = list(system_prompts or (trait.positive + trait.negative + [NEUTRAL_SYSTEM]))
    qs = list(questions or trait.eval_questions or trait.questions)
    prompts = [(s, q) for s in systems for q in qs]
    samples = generate_responses(model, prompts, tokenizer=tokenizer, batch_size=batch_size, **gen)
    scores = torch.tensor(score_all(judge, [(s.question, s.text) for s in samples], trait, "judge"))
    v = pv.vector(check_layer(model, layer))
    proj = last_prompt_projection(model, samples, v.to(next(model.parameters()).device), layer,
                                  batch_size=batch_size)
    return MonitorResult(proj, scores, pearson(proj, scores), samples)


@dataclass
class ScreeningResult:
    per_sample: torch.Tensor  # (N,) proj(dataset response) - proj(model's own response)
    dataset_projection: torch.Tensor  # (N,)
    own_projection: torch.Tensor  # (N,)

    @property
    def mean(self) -> float:
        """The data set's projection difference (mean over samples)."""
        return float(self.per_sample.mean())


def projection_difference(model, dataset: Sequence[Union[Sample, Tuple[str, str]]],
                          vector: torch.Tensor, layer: int, *, own: Optional[Sequence[Sample]] = None,
                          system: str = NEUTRAL_SYSTEM, tokenizer=None, batch_size: int = 16,
                          **gen) -> ScreeningResult:
    """Data screening: for each (prompt, response) of ``dataset`` (Samples, or (question,
    response) string pairs formatted with ``system``), the mean response-token projection onto
    ``vector`` at ``layer`` minus that of the model's own response to the same prompt
    (generated here unless ``own`` gives them). Large positive values flag data that would push
    the model toward the trait when finetuned on."""
    layer = check_layer(model, layer)
    vector = check_vector(model, vector)
    if not dataset:
        raise ValueError("dataset is empty: nothing to screen")
    data: List[Sample] = []
    for i, item in enumerate(dataset):
        if isinstance(item, Sample):
            data.append(item)
            continue
        tok = tokenizer_of(model, tokenizer)
        q, r = item
        data.append(Sample(chat_prompt(tok, system, q), encode(tok, r), question=q, system=system, text=r))
    if any(not s.response_ids for s in data):
        raise ValueError("every dataset response needs at least one token")
    if own is None:
        tok = tokenizer_of(model, tokenizer)
        own = []
        for start in range(0, len(data), batch_size):
            chunk = data[start:start + batch_size]
            kw = {"max_new_tokens": 32, **gen}
            # sample as pyinterp's generate does by default (HF models decode greedily unless asked)
            kw.setdefault("do_sample", kw.get("temperature", 1.0) > 0)
            gen_ids = model.generate([s.prompt_ids for s in chunk], include_prompt=False, **kw)
            own += [Sample(s.prompt_ids, list(g) or [s.prompt_ids[-1]], s.question, s.system,
                           tok.decode(g)) for s, g in zip(chunk, gen_ids)]
    if len(own) != len(data):
        raise ValueError(f"own must give one response per dataset sample ({len(data)}), got {len(own)}")
    d = projections(model, data, vector, [layer], batch_size=batch_size)[0, :, 0]
    o = projections(model, own, vector, [layer], batch_size=batch_size)[0, :, 0]
    return ScreeningResult(d - o, d, o)
