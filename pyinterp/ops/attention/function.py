"""The forward of the attention-statistics family, shared by every kernel backend, and its
torch.library ops. Forward only (docs/decisions/attention-stats-no-grad.md): the public ops
detach their inputs, so there is no backward.

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

from typing import Optional

import torch

from pyinterp._common import RULE_KINDS, acc_dtype, device_guard
from pyinterp.ops._dispatch import Op
from pyinterp.ops._library import custom_op, launchers

STATS_LAUNCHERS = ("attention_stats",)
PATTERN_LAUNCHERS = ("attention_stats", "attention_pattern")


def rule_codes(rules) -> tuple[list[int], list[int]]:
    """Parsed rules (pyinterp.ops.attention.Rule) -> (kinds, ns) as the kernels take them."""
    return [RULE_KINDS[r.kind] for r in rules], [int(r.n) for r in rules]


class Stats:
    """(lse, entropy, mass) per query; forward only."""

    @staticmethod
    def apply(q, k, tokens, kinds, ns, causal, kpm, scale, q_offset, launcher_set):
        with device_guard(q):
            return launcher_set.attention_stats(q, k, tokens, kinds, ns, causal, kpm, scale,
                                                q_offset)


class Pattern:
    """exp(s - lse) on attended keys; forward only."""

    @staticmethod
    def apply(q, k, lse, causal, kpm, scale, q_offset, launcher_set):
        with device_guard(q):
            return launcher_set.attention_pattern(q, k, lse, causal, kpm, scale, q_offset)


# ---------------------------------------------------------------------------------------
# torch.library: torch.ops.pyinterp.attention_stats / attention_pattern


def _stats_fake(q, k, tokens, kinds, ns, causal, key_padding_mask, scale, q_offset, backend):
    B, H, Tq, _ = q.shape
    acc = acc_dtype(q.dtype)
    return (q.new_empty(B, H, Tq, dtype=acc), q.new_empty(B, H, Tq, dtype=acc),
            q.new_empty(len(kinds), B, H, Tq, dtype=acc))


@custom_op("attention_stats", _stats_fake)
def attention_stats_op(q: torch.Tensor, k: torch.Tensor, tokens: Optional[torch.Tensor],
                       kinds: list[int], ns: list[int], causal: bool,
                       key_padding_mask: Optional[torch.Tensor], scale: float, q_offset: int,
                       backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return Stats.apply(q, k, tokens, kinds, ns, causal, key_padding_mask, scale, q_offset,
                       launchers(backend, "attention"))


@custom_op("attention_pattern", lambda q, k, lse, causal, key_padding_mask, scale, q_offset,
           backend: q.new_empty(*q.shape[:3], k.shape[2], dtype=acc_dtype(q.dtype)))
def attention_pattern_op(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, causal: bool,
                         key_padding_mask: Optional[torch.Tensor], scale: float, q_offset: int,
                         backend: str) -> torch.Tensor:
    return Pattern.apply(q, k, lse, causal, key_padding_mask, scale, q_offset,
                         launchers(backend, "attention"))


ATTENTION_STATS = Op("attention_stats", "attention", STATS_LAUNCHERS, Stats, attention_stats_op)
ATTENTION_PATTERN = Op("attention_pattern", "attention", PATTERN_LAUNCHERS, Pattern,
                       attention_pattern_op)
