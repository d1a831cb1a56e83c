"""Judges: any callable ``judge(question, response, trait) -> score in [0, 100]``.

The paper uses an LLM judge (GPT-4.1-mini) for trait expression and for coherence; pyinterp
takes any callable, so a user can plug in an API-backed judge. Built in, for small models:
:class:`ClassifierJudge` (a bag-of-n-grams classifier trained on labelled text: trait /
opposite / neutral), :class:`LexiconJudge` (trait expression from the trait's lexicon) and
:func:`coherence_score` (a text-quality heuristic). :func:`score_all` checks every score and
names the judge on error.
"""
from __future__ import annotations

import math
import re
import zlib
from typing import Callable, Dict, List, Sequence

import torch

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


class ClassifierJudge:
    """Trait expression 0..100 from a small text classifier: 50 + 50 * (P(trait) - P(opposite)).

    A linear softmax classifier over hashed features (words, word pairs and the character
    3–5-grams of each word, so unseen inflections still share features) with three labels:
    ``"positive"`` (expresses the trait), ``"negative"`` (expresses its opposite) and
    ``"neutral"``. Train it on labelled text written independently of the responses it will
    judge; :meth:`accuracy` measures it on held-out labelled text. Deterministic (zero init,
    full-batch Adam).

        judge = ClassifierJudge("optimistic").fit(texts, labels)
        judge.accuracy(test_texts, test_labels)        # share of held-out texts labelled right
        judge(question, response, trait)               # 0..100
    """

    LABELS = ("negative", "neutral", "positive")

    def __init__(self, trait: str, n_features: int = 1 << 15):
        if n_features < 1:
            raise ValueError(f"n_features must be positive, got {n_features}")
        self.trait = trait
        self.n_features = int(n_features)
        self.weight = torch.zeros(self.n_features, len(self.LABELS))
        self.bias = torch.zeros(len(self.LABELS))

    def features(self, text: str) -> List[int]:
        words = _WORD.findall(text.lower())
        grams = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]
        for w in words:
            padded = f"<{w}>"
            grams += [f"c:{padded[i:i + n]}" for n in (3, 4, 5) for i in range(len(padded) - n + 1)]
        return [zlib.crc32(g.encode()) % self.n_features for g in grams]

    def _batch(self, texts: Sequence[str]):
        """(row of each feature, feature index, weight): the texts as a sparse (N, n_features)
        matrix in coordinate form; each text's weights are 1/sqrt(its feature count) so long
        texts do not saturate."""
        rows, idx, weights = [], [], []
        for r, t in enumerate(texts):
            f = self.features(t)
            rows += [r] * len(f)
            idx += f
            weights += [1.0 / math.sqrt(max(1, len(f)))] * len(f)
        return (torch.tensor(rows, dtype=torch.long), torch.tensor(idx, dtype=torch.long),
                torch.tensor(weights).unsqueeze(1))

    def _logits(self, batch, n: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        rows, idx, w = batch
        return torch.zeros(n, len(self.LABELS)).index_add_(0, rows, weight[idx] * w) + bias

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        return self._logits(self._batch(texts), len(texts), self.weight, self.bias)

    def fit(self, texts: Sequence[str], labels: Sequence[str], steps: int = 150, lr: float = 0.1,
            weight_decay: float = 0.0) -> "ClassifierJudge":
        """Softmax regression, full-batch Adam from zero weights for ``steps`` steps (the short
        run is the regulariser: on held-out wording it beats L2 here), optional L2
        ``weight_decay``. The gradient is written out: two index operations on the sparse
        features."""
        bad = sorted(set(labels) - set(self.LABELS))
        if bad or len(texts) != len(labels) or not texts:
            raise ValueError(f"fit needs as many labels as texts (got {len(texts)} texts, {len(labels)} "
                             f"labels), each one of {self.LABELS}" + (f"; unknown labels {bad}" if bad else ""))
        n = len(texts)
        onehot = torch.nn.functional.one_hot(torch.tensor([self.LABELS.index(l) for l in labels]),
                                             len(self.LABELS)).float()
        batch = self._batch(texts)
        rows, idx, w = batch
        weight, bias = torch.zeros_like(self.weight), torch.zeros_like(self.bias)
        opt = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(steps):
            err = (torch.softmax(self._logits(batch, n, weight, bias), -1) - onehot) / n  # dLoss/dlogits
            weight.grad = torch.zeros_like(weight).index_add_(0, idx, err[rows] * w) + 2 * weight_decay * weight
            bias.grad = err.sum(0)
            opt.step()
        self.weight, self.bias = weight, bias
        return self

    def predict(self, texts: Sequence[str]) -> List[str]:
        return [self.LABELS[i] for i in self.logits(texts).argmax(-1).tolist()]

    def accuracy(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        """Share of ``texts`` whose predicted label is ``labels[i]``."""
        return sum(p == l for p, l in zip(self.predict(texts), labels)) / max(1, len(texts))

    def score(self, response: str) -> float:
        p = torch.softmax(self.logits([response])[0], -1)
        return float(50.0 + 50.0 * (p[2] - p[0]))

    def __call__(self, question: str, response: str, trait: TraitSpec) -> float:
        if trait.name != self.trait:
            raise ValueError(f"this ClassifierJudge was trained for trait {self.trait!r}, not {trait.name!r}")
        return self.score(response)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> "ClassifierJudge":
        if tuple(state["weight"].shape) != (self.n_features, len(self.LABELS)):
            raise ValueError(f"weight has shape {tuple(state['weight'].shape)}, expected "
                             f"({self.n_features}, {len(self.LABELS)})")
        self.weight, self.bias = state["weight"].float(), state["bias"].float()
        return self


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
