"""Trait specifications: what a persona vector is extracted for (Chen et al. 2025).

A trait is a name, a description, pairs of positive / negative system prompts (positive[i] and
negative[i] form pair i), extraction questions, held-out evaluation questions and, optionally,
a lexicon of words that express the trait or its opposite (used by the built-in judge). Files
are JSON with the fields of :data:`JSON_SCHEMA`; :func:`load_trait` validates them and names
the failing field (``positive[2]``, ``lexicon.negative`` ...).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pyinterp persona trait",
    "type": "object",
    "required": ["name", "positive", "negative", "questions"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "positive": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "negative": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "questions": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "eval_questions": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "lexicon": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "positive": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "negative": {"type": "array", "items": {"type": "string", "minLength": 1}},
            },
        },
    },
}


class TraitSpecError(ValueError):
    """A trait specification that fails the schema; the message names the field."""


@dataclass
class TraitSpec:
    name: str
    positive: List[str]
    negative: List[str]
    questions: List[str]
    eval_questions: List[str] = field(default_factory=list)
    description: str = ""
    lexicon: Dict[str, List[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Union[str, Path]) -> None:
        from pyinterp._files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def _strings(d: dict, key: str, where: str, required: bool, min_items: int) -> List[str]:
    if key not in d:
        if required:
            raise TraitSpecError(f"{where}: missing required field '{key}'")
        return []
    v = d[key]
    if not isinstance(v, list):
        raise TraitSpecError(f"{where}: field '{key}' must be a list of strings, got {type(v).__name__}")
    if len(v) < min_items:
        raise TraitSpecError(f"{where}: field '{key}' must have at least {min_items} item(s), got {len(v)}")
    for i, s in enumerate(v):
        if not isinstance(s, str) or not s.strip():
            raise TraitSpecError(f"{where}: field '{key}[{i}]' must be a non-empty string, got {s!r}")
    return list(v)


def validate_trait(d, where: str = "trait spec") -> TraitSpec:
    """Check a dict against :data:`JSON_SCHEMA` (and pair counts); return the TraitSpec."""
    if not isinstance(d, dict):
        raise TraitSpecError(f"{where}: must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    if "trait" in d and "name" not in d:  # pyinterp.data.ContrastivePromptSet's field name
        d["name"] = d.pop("trait")
    unknown = sorted(set(d) - set(JSON_SCHEMA["properties"]))
    if unknown:
        raise TraitSpecError(f"{where}: unknown field(s) {unknown}; allowed: "
                             f"{sorted(JSON_SCHEMA['properties'])}")
    if "name" not in d:
        raise TraitSpecError(f"{where}: missing required field 'name'")
    if not isinstance(d["name"], str) or not d["name"].strip():
        raise TraitSpecError(f"{where}: field 'name' must be a non-empty string, got {d['name']!r}")
    desc = d.get("description", "")
    if not isinstance(desc, str):
        raise TraitSpecError(f"{where}: field 'description' must be a string, got {type(desc).__name__}")
    pos = _strings(d, "positive", where, True, 1)
    neg = _strings(d, "negative", where, True, 1)
    if len(pos) != len(neg):
        raise TraitSpecError(f"{where}: fields 'positive' and 'negative' must pair up (same length), "
                             f"got {len(pos)} and {len(neg)}")
    questions = _strings(d, "questions", where, True, 1)
    eval_q = _strings(d, "eval_questions", where, False, 0)
    lex = d.get("lexicon", {})
    if not isinstance(lex, dict):
        raise TraitSpecError(f"{where}: field 'lexicon' must be an object, got {type(lex).__name__}")
    bad = sorted(set(lex) - {"positive", "negative"})
    if bad:
        raise TraitSpecError(f"{where}: unknown field(s) {['lexicon.' + b for b in bad]}; "
                             "allowed: lexicon.positive, lexicon.negative")
    lexicon = {}
    for k in ("positive", "negative"):
        try:
            lexicon[k] = [w.lower() for w in _strings(lex, k, where, False, 0)]
        except TraitSpecError as e:
            raise TraitSpecError(str(e).replace(f"'{k}", f"'lexicon.{k}")) from None
    return TraitSpec(name=d["name"], positive=pos, negative=neg, questions=questions,
                     eval_questions=eval_q, description=desc, lexicon=lexicon)


def load_trait(source: Union[str, Path, dict, TraitSpec]) -> TraitSpec:
    """A TraitSpec from a JSON file, a dict, a built-in trait name, or a TraitSpec."""
    if isinstance(source, TraitSpec):
        return source
    if isinstance(source, dict):
        return validate_trait(source)
    if isinstance(source, str) and source in BUILTIN_LEXICONS and not Path(source).exists():
        return builtin_trait(source)
    path = Path(source)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"trait file {str(path)!r} does not exist (built-in traits: "
                                f"{sorted(BUILTIN_LEXICONS)})") from None
    except json.JSONDecodeError as e:
        raise TraitSpecError(f"trait file {str(path)!r} is not valid JSON: {e}") from None
    return validate_trait(d, where=f"trait file {str(path)!r}")


# Words of the demo persona vocabulary: the built-in lexicon judge counts them.
BUILTIN_LEXICONS: Dict[str, Dict[str, List[str]]] = {
    "optimistic": {
        "positive": ["hope", "hopeful", "bright", "great", "wonderful", "good", "better", "best",
                     "opportunity", "possible", "success", "succeed", "progress", "confident",
                     "exciting", "happy", "improve", "positive", "will work", "love", "joy"],
        "negative": ["fail", "failure", "worse", "worst", "bad", "doubt", "gloom", "gloomy",
                     "hopeless", "decline", "danger", "risk", "wrong", "never", "sad", "afraid",
                     "problem", "negative", "impossible", "loss", "fear"],
    },
    "formal": {
        "positive": ["therefore", "furthermore", "moreover", "consequently", "regarding",
                     "shall", "accordingly", "hence", "thus", "respectfully", "pursuant"],
        "negative": ["hey", "gonna", "wanna", "cool", "yeah", "lol", "awesome", "stuff", "kinda",
                     "dude", "ok", "okay", "btw"],
    },
    "sycophantic": {
        "positive": ["brilliant", "genius", "amazing", "absolutely right", "excellent idea",
                     "you are right", "wonderful", "impressive", "agree", "perfect", "insightful"],
        "negative": ["however", "disagree", "incorrect", "actually", "flaw", "mistake", "wrong",
                     "evidence", "but", "consider", "not quite"],
    },
}


def builtin_trait(name: str, n_questions: int = 20) -> TraitSpec:
    """A built-in trait (the prompts of :func:`pyinterp.data.contrastive_prompts` plus a lexicon)."""
    from pyinterp.data.prompts import contrastive_prompts

    if name not in BUILTIN_LEXICONS:
        raise ValueError(f"unknown built-in trait {name!r}; built in: {sorted(BUILTIN_LEXICONS)}")
    s = contrastive_prompts(name, n_questions=n_questions)
    return TraitSpec(name=name, positive=s.positive, negative=s.negative, questions=s.questions,
                     eval_questions=s.eval_questions, description=s.description,
                     lexicon={k: list(v) for k, v in BUILTIN_LEXICONS[name].items()})


def builtin_traits() -> List[str]:
    return sorted(BUILTIN_LEXICONS)


def trait_or_none(t: Optional[Union[str, Path, dict, TraitSpec]]) -> Optional[TraitSpec]:
    return None if t is None else load_trait(t)
