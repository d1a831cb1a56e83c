"""Persona-vector extraction (Chen et al. 2025, section 2).

For every (positive, negative) system-prompt pair and extraction question, sample responses
under each prompt; judge trait expression and coherence; keep positive responses with trait
>= 50 and negative ones with trait < 50, both with coherence >= 50; the persona vector at layer
l is mean(response-token activation | kept positive) - mean(... | kept negative), each response
first averaged over its own tokens. Activations are reduced on the device as they are produced
(:mod:`pyinterp.persona.activations`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from pyinterp.persona._model import check_layer, check_layers, d_model
from pyinterp.persona.activations import mean_activations
from pyinterp.persona.data import Sample, generate_responses
from pyinterp.persona.judge import Judge, LexiconJudge, coherence_score, score_all
from pyinterp.persona.trait import TraitSpec, load_trait

THRESHOLD = 50.0


class EmptyFilteredSetError(ValueError):
    """Filtering kept no response on one side; the message says how many were dropped and why."""


@dataclass
class FilterResult:
    keep: List[int]
    dropped_trait: int
    dropped_coherence: int
    total: int


def filter_responses(trait_scores: Sequence[float], coherence: Sequence[float], positive: bool,
                     threshold: float = THRESHOLD, coherence_min: float = THRESHOLD,
                     what: str = "") -> FilterResult:
    """Indices that pass the paper's filter: trait >= threshold (positive side) or < threshold
    (negative side), and coherence >= coherence_min. Raises EmptyFilteredSetError if none."""
    keep, d_trait, d_coh = [], 0, 0
    for i, (t, c) in enumerate(zip(trait_scores, coherence)):
        ok_trait = t >= threshold if positive else t < threshold
        if not ok_trait:
            d_trait += 1
        elif c < coherence_min:
            d_coh += 1
        else:
            keep.append(i)
    res = FilterResult(keep, d_trait, d_coh, len(trait_scores))
    if not keep:
        side = "positive" if positive else "negative"
        rule = f"trait {'<' if positive else '>='} {threshold:g}"
        raise EmptyFilteredSetError(
            f"no {side} response{' for ' + what if what else ''} passed the filter: "
            f"{res.total} generated, {d_trait} dropped for {rule}, {d_coh} dropped for coherence "
            f"< {coherence_min:g}. Sample more responses (n_samples), use stronger system prompts, "
            "or check the judge")
    return res


VECTORS_FILE = "vectors.safetensors"
PERSONA_FILE = "persona.json"


@dataclass
class PersonaVectors:
    """Persona vectors of one trait: ``vectors[k]`` (D,) at layer ``layers[k]``."""

    trait: str
    layers: List[int]
    vectors: torch.Tensor  # (L, D) float32
    pos_mean: Optional[torch.Tensor] = None
    neg_mean: Optional[torch.Tensor] = None
    stats: Dict = field(default_factory=dict)
    samples: Dict[str, List[Sample]] = field(default_factory=dict)  # kept "positive"/"negative"

    def vector(self, layer: int) -> torch.Tensor:
        """The persona vector (D,) at model layer ``layer``."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not extracted; have layers {self.layers}")
        return self.vectors[self.layers.index(layer)]

    def save(self, directory: Union[str, Path]) -> Path:
        """``vectors.safetensors`` + ``persona.json`` (trait, layers, stats, the vectors'
        sha256), written atomically with checksums (:mod:`pyinterp._files`)."""
        from pyinterp._files import atomic_save_tensors, atomic_write_json, sha256_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {"vectors": self.vectors.detach().float().cpu().contiguous()}
        for k in ("pos_mean", "neg_mean"):
            if getattr(self, k) is not None:
                tensors[k] = getattr(self, k).detach().float().cpu().contiguous()
        atomic_save_tensors(d / VECTORS_FILE, tensors)
        meta = {"trait": self.trait, "layers": self.layers, "stats": self.stats,
                "files": {VECTORS_FILE: sha256_file(d / VECTORS_FILE)}}
        atomic_write_json(d / PERSONA_FILE, meta, checksum=True)
        return d

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "PersonaVectors":
        """Read what :meth:`save` wrote; a damaged or inconsistent file raises
        :class:`pyinterp.CorruptFileError` naming it."""
        from pyinterp._files import CorruptFileError, load_tensors, read_json, read_verified

        d = Path(directory)
        pfile, vfile = d / PERSONA_FILE, d / VECTORS_FILE
        meta = read_json(pfile, "persona vectors description")
        digest = (meta.get("files") or {}).get(VECTORS_FILE)
        data = read_verified(vfile, digest, "persona vectors", pfile) if digest else None
        t = load_tensors(vfile, "persona vectors", data=data)
        layers, vec = meta.get("layers"), t.get("vectors")
        if not isinstance(meta.get("trait"), str) or not isinstance(layers, list) or \
                not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise CorruptFileError(f"{pfile} needs 'trait' (a string) and 'layers' (a list of "
                                   "ints)", pfile)
        if vec is None or vec.dim() != 2 or vec.shape[0] != len(layers):
            raise CorruptFileError(f"{vfile}: 'vectors' must have shape ({len(layers)}, D) for the "
                                   f"{len(layers)} layers in {pfile}, got "
                                   f"{None if vec is None else tuple(vec.shape)}", vfile)
        for k in ("pos_mean", "neg_mean"):
            if k in t and t[k].shape != vec.shape:
                raise CorruptFileError(f"{vfile}: {k} has shape {tuple(t[k].shape)}, expected "
                                       f"{tuple(vec.shape)}", vfile)
        return cls(trait=meta["trait"], layers=list(layers), vectors=vec,
                   pos_mean=t.get("pos_mean"), neg_mean=t.get("neg_mean"),
                   stats=meta.get("stats", {}))

    def check_model(self, model) -> None:
        """ValueError if these vectors cannot apply to ``model`` (D or layers differ)."""
        D = d_model(model)
        if self.vectors.shape[-1] != D:
            raise ValueError(f"persona vectors have D={self.vectors.shape[-1]} but the model's "
                             f"d_model is {D}")
        for layer in self.layers:
            check_layer(model, layer)


def extract_persona_vectors(model, trait: Union[str, Path, dict, TraitSpec], *,
                            judge: Optional[Judge] = None, coherence_judge: Judge = coherence_score,
                            layers: Optional[Sequence[int]] = None, tokenizer=None,
                            n_samples: int = 1, max_new_tokens: int = 32, temperature: float = 1.0,
                            batch_size: int = 16, seed: int = 0, threshold: float = THRESHOLD,
                            coherence_min: float = THRESHOLD, progress: bool = False) -> PersonaVectors:
    """Generate, judge, filter, and take the difference of mean response activations.

    judge(question, response, trait) -> 0..100 trait expression (default: the built-in
    :class:`LexiconJudge`); coherence_judge likewise (default :func:`coherence_score`).
    Returns per-layer vectors for ``layers`` (default all), with the kept samples and counts.
    """
    trait = load_trait(trait)
    layers = check_layers(model, layers)
    judge = judge or LexiconJudge()
    prompts, meta = [], []
    for i, (pos, neg) in enumerate(zip(trait.positive, trait.negative)):
        for q in trait.questions:
            prompts.append((pos, q))
            meta.append({"pair": i, "side": "positive"})
            prompts.append((neg, q))
            meta.append({"pair": i, "side": "negative"})
    samples = generate_responses(model, prompts, tokenizer=tokenizer, n_samples=n_samples,
                                 max_new_tokens=max_new_tokens, temperature=temperature,
                                 batch_size=batch_size, seed=seed, progress=progress, meta=meta)
    kept: Dict[str, List[Sample]] = {}
    stats: Dict = {}
    for side in ("positive", "negative"):
        group = [s for s in samples if s.meta["side"] == side]
        items = [(s.question, s.text) for s in group]
        t_scores = score_all(judge, items, trait, "judge")
        c_scores = score_all(coherence_judge, items, trait, "coherence_judge")
        for s, t, c in zip(group, t_scores, c_scores):
            s.meta.update(trait_score=t, coherence=c)
        res = filter_responses(t_scores, c_scores, side == "positive", threshold, coherence_min,
                               what=f"trait {trait.name!r}")
        chosen = [group[i] for i in res.keep if group[i].response_ids]
        if not chosen:
            raise EmptyFilteredSetError(f"every kept {side} response is empty (0 tokens): "
                                        "raise max_new_tokens")
        kept[side] = chosen
        stats[side] = {"generated": res.total, "kept": len(chosen), "dropped_trait": res.dropped_trait,
                       "dropped_coherence": res.dropped_coherence,
                       "mean_trait_score": sum(t_scores) / len(t_scores)}
    pos = mean_activations(model, kept["positive"], layers, batch_size=batch_size, progress=progress)
    neg = mean_activations(model, kept["negative"], layers, batch_size=batch_size, progress=progress)
    return PersonaVectors(trait=trait.name, layers=layers, vectors=pos - neg, pos_mean=pos,
                          neg_mean=neg, stats=stats, samples=kept)


def persona_vectors_from_samples(model, positive: Sequence[Sample], negative: Sequence[Sample],
                                 layers: Optional[Sequence[int]] = None, trait: str = "",
                                 batch_size: int = 16) -> PersonaVectors:
    """The difference of mean response activations for already filtered samples."""
    layers = check_layers(model, layers)
    pos = mean_activations(model, positive, layers, batch_size=batch_size)
    neg = mean_activations(model, negative, layers, batch_size=batch_size)
    return PersonaVectors(trait=trait, layers=layers, vectors=pos - neg, pos_mean=pos, neg_mean=neg,
                          samples={"positive": list(positive), "negative": list(negative)})
