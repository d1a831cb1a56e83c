"""The forward of the attention-statistics family, shared by every kernel backend. Forward
only (docs/decisions/attention-stats-no-grad.md): no autograd Function, the ops run under
``torch.no_grad``.

A backend supplies the launcher set (``pyinterp/backends/<name>/attention.py``):

- ``attention_stats(q, k, tokens, kinds, ns, causal, kpm, scale, q_offset) -> (lse, ent, mass)``:
  q (B, H, Tq, d) are the queries at positions q_offset .. q_offset + Tq - 1; k (B, H_kv, Tk, d);
  tokens (B, Tk) int or None (needed by the token rules only); kinds / ns: one rule each, as
  lists of ints (kinds coded by ``pyinterp._common.RULE_KINDS``); kpm (B, Tk) bool (True =
  padding) or None. Returns (B, H, Tq), (B, H, Tq), (R, B, H, Tq) in the accumulation dtype.
- ``attention_pattern(q, k, lse, causal, kpm, scale, q_offset) -> (B, H, Tq, Tk)``:
  exp(s - lse) on attended keys, 0 elsewhere.
"""
from __future__ import annotations

from pyinterp._common import RULE_KINDS, device_guard

STATS_LAUNCHERS = ("attention_stats",)
PATTERN_LAUNCHERS = ("attention_stats", "attention_pattern")


def rule_codes(rules) -> tuple[list[int], list[int]]:
    """Parsed rules (pyinterp.ops.attention.Rule) -> (kinds, ns) as the kernels take them."""
    return [RULE_KINDS[r.kind] for r in rules], [int(r.n) for r in rules]


def stats(launchers, q, k, tokens, rules, causal, kpm, scale, q_offset):
    kinds, ns = rule_codes(rules)
    with device_guard(q):
        return launchers.attention_stats(q, k, tokens, kinds, ns, causal, kpm, scale, q_offset)


def pattern(launchers, q, k, lse, causal, kpm, scale, q_offset):
    with device_guard(q):
        return launchers.attention_pattern(q, k, lse, causal, kpm, scale, q_offset)
