"""Judges: any callable ``judge(question, response, trait) -> score in [0, 100]``.

The paper uses an LLM judge (GPT-4.1-mini) for trait expression and for coherence; pyinterp
takes any callable, so a user can plug in an API-backed judge. Built in, for the demo model:
:class:`LexiconJudge` (trait expression from the trait's lexicon) and :func:`coherence_score`
(a text-quality heuristic). :func:`score_all` checks every score and names the judge on error.
"""
from __future__ import annotations

import math
import re
from typing import Callable, List, Sequence

from pyinterp.persona.trait import TraitSpec

Judge = Callable[[str, str, TraitSpec], float]

_WORD = re.compile(r"[a-z']+")


class LexiconJudge:
    """Trait expression 0..100 from lexicon hits: 50 + 50 * (pos - neg) / (pos + neg + smooth).

    Words (or phrases) of ``trait.lexicon["positive"]`` push the score up, ``["negative"]`` down;
    a response with none scores 50.
    """

    def __init__(self, smooth: float = 1.0):
        self.smooth = float(smooth)

    def __call__(self, question: str, response: str, trait: TraitSpec) -> float:
        lex = trait.lexicon or {}
        if not lex.get("positive") and not lex.get("negative"):
            raise ValueError(f"trait {trait.name!r} has no lexicon: the built-in LexiconJudge needs "
                             "one (add 'lexicon' to the trait file) or pass your own judge")
        text = " " + " ".join(_WORD.findall(response.lower())) + " "
        pos = sum(text.count(f" {w} ") for w in lex.get("positive", []))
        neg = sum(text.count(f" {w} ") for w in lex.get("negative", []))
        return 50.0 + 50.0 * (pos - neg) / (pos + neg + self.smooth)


def coherence_score(question: str, response: str, trait: TraitSpec = None) -> float:
    """A coherence heuristic 0..100 for small demo models: the share of word characters times
    the share of distinct words (repetition loops and byte soup score low)."""
    if not response.strip():
        return 0.0
    chars = sum(c.isalpha() or c.isspace() or c in ".,!?'" for c in response) / len(response)
    words = _WORD.findall(response.lower())
    if not words:
        return 0.0
    distinct = len(set(words)) / len(words)
    return 100.0 * chars * min(1.0, distinct * 1.5)


def score_all(judge: Judge, items: Sequence[tuple], trait: TraitSpec, what: str) -> List[float]:
    """judge(question, response, trait) for every (question, response); each must be a number
    in [0, 100] (ValueError naming ``what`` otherwise)."""
    out = []
    for i, (q, r) in enumerate(items):
        s = judge(q, r, trait)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= 100:
            raise ValueError(f"{what} must return a number in [0, 100]; for response {i} it returned {s!r}")
        out.append(float(s))
    return out
