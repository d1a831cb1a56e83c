"""Attention-pattern ops: ``attention_stats`` and ``attention_pattern``.

``attention_stats`` computes per-query statistics of softmax(q k^T * scale) in one flash-style
pass over key tiles with an online softmax, never building the (T, T) pattern: the
log-sum-exp, the entropy and the attention mass on keys chosen by rules. ``attention_pattern``
materialises the exact pattern only for chosen heads and a query range (or the top-m keys).

Rules (docs/decisions/attention-rules.md), for query position i and key position j:

- ``"prev"``       j = i - 1 (same as ``"offset:1"``)
- ``"first"``      j = 0
- ``"offset:n"``   j = i - n (``"offset:0"`` is the query itself)
- ``"duplicate"``  j < i and tokens[j] == tokens[i]
- ``"induction"``  1 <= j <= i and tokens[j - 1] == tokens[i] (prefix matching; TransformerLens's
                   induction detection pattern)

``duplicate`` and ``induction`` refer to earlier positions, so they need ``causal=True``.
Statistics are forward-only (no autograd): docs/decisions/attention-stats-no-grad.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, NamedTuple, Optional, Sequence, Union

import torch

from pyinterp._common import to_device_async
from pyinterp.ops import _validate as check
from pyinterp.ops._dispatch import is_oracle, pick
from pyinterp.ops.attention.function import ATTENTION_PATTERN, ATTENTION_STATS, rule_codes

DEFAULT_RULES = ("prev", "first", "duplicate", "induction")
TOKEN_RULES = ("duplicate", "induction")
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


class Rule(NamedTuple):
    """A parsed rule. kind: "offset" (key = query - n), "pos" (key = n), "duplicate", "induction"."""

    name: str
    kind: str
    n: int = 0


def parse_rule(rule) -> Rule:
    """Parse a rule name (see the module docstring) into a :class:`Rule`."""
    if not isinstance(rule, str):
        raise TypeError(f"rules must contain strings, got {type(rule).__name__} {rule!r}")
    if rule == "prev":
        return Rule(rule, "offset", 1)
    if rule == "first":
        return Rule(rule, "pos", 0)
    if rule in TOKEN_RULES:
        return Rule(rule, rule, 0)
    if rule.startswith("offset:"):
        text = rule[len("offset:"):]
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"rules: {rule!r} must be 'offset:<int>', e.g. 'offset:2'") from None
        return Rule(rule, "offset", n)
    raise ValueError(
        f"rules: unknown rule {rule!r}; expected 'prev', 'first', 'duplicate', 'induction' "
        "or 'offset:<int>'"
    )


def parse_rules(rules) -> tuple:
    if isinstance(rules, str):
        rules = (rules,)
    if not isinstance(rules, (tuple, list)):
        raise TypeError(f"rules must be a tuple or list of rule names, got {type(rules).__name__}")
    parsed = tuple(parse_rule(r) for r in rules)
    names = [r.name for r in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"rules must not repeat a rule, got {list(rules)}")
    return parsed


@dataclass
class AttentionStats:
    """Per-query attention statistics; every tensor is (B, H, T) in float32 (float64 inputs: float64).

    lse: log-sum-exp of the (masked, scaled) scores over the attended keys (-inf when a query
    attends to no key); entropy: Shannon entropy of the pattern row in nats (0 for such rows);
    mass: rule name -> total attention probability on the keys the rule selects.
    """

    lse: torch.Tensor
    entropy: torch.Tensor
    mass: Dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, rule: str) -> torch.Tensor:
        return self.mass[rule]


def _check_qk(q, k):
    check.tensor("q", q, ndim=4)
    check.tensor("k", k, ndim=4)
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share one dtype, got q {q.dtype} and k {k.dtype}")
    B, H, T, d = q.shape
    if k.shape[0] != B or k.shape[2] != T or k.shape[3] != d:
        raise ValueError(
            f"k must have shape (B, H_kv, T, d_head) = ({B}, H_kv, {T}, {d}) to match "
            f"q {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if T == 0:
        raise ValueError("q and k must have T >= 1 positions, got T = 0")
    if d == 0:
        raise ValueError("q and k must have d_head >= 1, got d_head = 0")
    if k.shape[1] == 0 or H == 0:
        raise ValueError(f"q and k must have at least one head, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if H % k.shape[1] != 0:
        raise ValueError(
            f"k has {k.shape[1]} heads, which must divide the {H} heads of q "
            "(grouped-query attention: H a multiple of H_kv)"
        )
    return B, H, T, d


def _check_mask(key_padding_mask, B, T):
    if key_padding_mask is None:
        return None
    if not isinstance(key_padding_mask, torch.Tensor):
        raise TypeError(
            f"key_padding_mask must be a bool torch.Tensor, got {type(key_padding_mask).__name__}")
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(
            "key_padding_mask must have dtype bool (True = padding key, ignored), got "
            f"{key_padding_mask.dtype}; from a Hugging Face attention_mask use attention_mask == 0")
    check.shape("key_padding_mask", key_padding_mask, (B, T), "(B, T)")
    return key_padding_mask


def _check_scale(scale, d):
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    return float(scale)


def _check_causal(causal):
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")


def attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    tokens: Optional[torch.Tensor] = None,
    rules: Sequence[str] = DEFAULT_RULES,
    causal: bool = True,
    key_padding_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    *,
    backend: Optional[str] = None,
) -> AttentionStats:
    """Per-query statistics of softmax(q k^T * scale), without materialising the pattern.

    q: (B, H, T, d_head); k: (B, H_kv, T, d_head) with H a multiple of H_kv (query head h reads
    key head h // (H // H_kv), as in grouped-query attention); tokens: (B, T) integer, needed by
    the "duplicate" and "induction" rules; key_padding_mask: (B, T) bool, True where a key is
    padding (never attended); scale: default 1 / sqrt(d_head).

    Returns an :class:`AttentionStats` with lse, entropy and mass[rule], each (B, H, T), in
    float32 (float64 for float64 inputs). Extra memory O(B * H * T). Forward only.
    """
    B, H, T, d = _check_qk(q, k)
    _check_causal(causal)
    parsed = parse_rules(rules)
    needs_tokens = [r.name for r in parsed if r.kind in TOKEN_RULES]
    if needs_tokens and not causal:
        raise ValueError(
            f"rules {needs_tokens} refer to earlier positions and need causal=True "
            "(with causal=False use only 'prev', 'first' and 'offset:n')")
    if tokens is not None:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.dtype not in INT_DTYPES:
            raise TypeError(f"tokens must have an integer dtype, got {tokens.dtype}")
        check.shape("tokens", tokens, (B, T), "(B, T) matching q")
    elif needs_tokens:
        raise ValueError(f"tokens (B, T) are required by the rules {needs_tokens}")
    key_padding_mask = _check_mask(key_padding_mask, B, T)
    scale = _check_scale(scale, d)
    check.same_device(q=q, k=k, tokens=tokens, key_padding_mask=key_padding_mask)
    name, impl = pick(ATTENTION_STATS, q, k, backend=backend)
    args = (q.detach(), k.detach(), tokens if needs_tokens else None)
    with torch.no_grad():
        if is_oracle(name):
            lse, ent, mass = impl.attention_stats(*args, parsed, causal, key_padding_mask, scale, 0)
        else:
            lse, ent, mass = ATTENTION_STATS.apply(name, impl, *args, *rule_codes(parsed), causal,
                                                   key_padding_mask, scale, 0)
    return AttentionStats(lse, ent, {r.name: mass[i] for i, r in enumerate(parsed)})


QueryRange = Union[None, slice, range, tuple]


def _check_queries(queries, T):
    if queries is None:
        return 0, T
    if isinstance(queries, (slice, range)):
        if queries.step not in (None, 1):
            raise ValueError(f"queries must be a contiguous range (step 1), got {queries!r}")
        start, stop, _ = slice(queries.start, queries.stop).indices(T)
    elif isinstance(queries, tuple) and len(queries) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in queries):
        start, stop, _ = slice(*queries).indices(T)
    else:
        raise TypeError(
            f"queries must be None, a slice, a range or a (start, stop) tuple, got {queries!r}")
    if stop <= start:
        raise ValueError(f"queries selects no position of T = {T}: {queries!r}")
    return start, stop


def _check_heads(heads, H):
    if heads is None:
        return list(range(H))
    if isinstance(heads, int) and not isinstance(heads, bool):
        heads = [heads]
    if isinstance(heads, torch.Tensor):
        heads = heads.tolist()
    if not isinstance(heads, (list, tuple, range)) or len(heads) == 0:
        raise TypeError(f"heads must be None, an int or a non-empty sequence of ints, got {heads!r}")
    out = []
    for h in heads:
        if isinstance(h, bool) or not isinstance(h, int):
            raise TypeError(f"heads must contain ints, got {h!r}")
        if not -H <= h < H:
            raise ValueError(f"heads: head {h} is out of range for H = {H}")
        out.append(h % H)
    return out


# Top-m runs the pattern kernel over query chunks of at most this many elements.
_TOPM_CHUNK_ELEMENTS = 1 << 24


def attention_pattern(
    q: torch.Tensor,
    k: torch.Tensor,
    heads=None,
    queries: QueryRange = None,
    causal: bool = True,
    key_padding_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    top_m: Optional[int] = None,
    *,
    backend: Optional[str] = None,
):
    """The exact softmax pattern for chosen heads and queries only.

    q: (B, H, T, d_head), k: (B, H_kv, T, d_head) as in :func:`attention_stats`; heads: None
    (all), an int or a list of query-head indices (Hs of them); queries: None (all) or a
    contiguous range (slice, range or (start, stop)) of Q query positions.

    Returns the pattern (B, Hs, Q, T) in float32 (float64 for float64 inputs), rows summing to
    1 over attended keys; or, with ``top_m=m``, ``(values, indices)`` each (B, Hs, Q, m): the m
    largest probabilities per query in descending order and their key positions (value 0 and
    index -1 where a query attends to fewer than m keys, or a probability underflows to 0). Top-m computes the pattern a query chunk at a time,
    so its memory stays bounded for long contexts. Forward only.
    """
    B, H, T, d = _check_qk(q, k)
    _check_causal(causal)
    hs = _check_heads(heads, H)
    start, stop = _check_queries(queries, T)
    key_padding_mask = _check_mask(key_padding_mask, B, T)
    scale = _check_scale(scale, d)
    if top_m is not None:
        check.integer("top_m", top_m, low=1, high=T)
    check.same_device(q=q, k=k, key_padding_mask=key_padding_mask)
    name, impl = pick(ATTENTION_PATTERN, q, k, backend=backend)
    oracle = is_oracle(name)
    group = H // k.shape[1]
    idx = to_device_async(hs, torch.int64, q.device)  # no host sync on a GPU
    with torch.no_grad():
        q_sel = q.detach().index_select(1, idx)
        k_sel = k.detach().index_select(1, idx // group)  # one key head per selected head

        def rows(a, b):
            qc = q_sel[:, :, a:b]
            if oracle:
                lse = impl.attention_stats(qc, k_sel, None, (), causal, key_padding_mask, scale, a)[0]
                return impl.attention_pattern(qc, k_sel, lse, causal, key_padding_mask, scale, a)
            lse = ATTENTION_STATS.apply(name, impl, qc, k_sel, None, [], [], causal,
                                        key_padding_mask, scale, a)[0]
            return ATTENTION_PATTERN.apply(name, impl, qc, k_sel, lse, causal, key_padding_mask,
                                           scale, a)

        if top_m is None:
            return rows(start, stop)
        chunk = max(1, _TOPM_CHUNK_ELEMENTS // max(1, B * len(hs) * T))
        values, indices = [], []
        for a in range(start, stop, chunk):
            p = rows(a, min(stop, a + chunk))
            v, i = torch.topk(p, top_m, dim=-1)
            # keys a query cannot attend to have p == 0 exactly and never beat attended keys
            # (p > 0 unless it underflows); mark them -1.
            i = torch.where(v > 0, i, torch.full_like(i, -1))
            values.append(v)
            indices.append(i)
        return torch.cat(values, dim=2), torch.cat(indices, dim=2)
