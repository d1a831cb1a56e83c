"""Launcher-side helpers several backends share (output allocation, device tables), so each
backend's launcher holds only its own launch configuration."""
from __future__ import annotations

import torch

from pyinterp._common import RULE_KINDS, acc_dtype, device_layer_table, to_device_async

TOKEN_RULES = (RULE_KINDS["duplicate"], RULE_KINDS["induction"])


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def stats_outputs(q: torch.Tensor, k: torch.Tensor, n_rules: int):
    """Contiguous q, k and the empty (lse, entropy, mass) outputs of attention_stats."""
    q, k = q.contiguous(), k.contiguous()
    B, H, Tq, _ = q.shape
    ad, dev = acc_dtype(q.dtype), q.device
    lse = torch.empty(B, H, Tq, dtype=ad, device=dev)
    ent = torch.empty(B, H, Tq, dtype=ad, device=dev)
    mass = torch.empty(n_rules, B, H, Tq, dtype=ad, device=dev)
    return q, k, (lse, ent, mass)


def rule_tables(kinds, ns, device):
    """The rules as device tensors (kinds int32, ns int64; one dummy entry when there are no
    rules) and whether any needs the tokens."""
    needs_tokens = any(c in TOKEN_RULES for c in kinds)
    kinds_t = to_device_async(list(kinds) or [0], torch.int32, device)
    ns_t = to_device_async(list(ns) or [0], torch.int64, device)
    return kinds_t, ns_t, needs_tokens


def pattern_output(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, kpm):
    """Contiguous q, k, lse (in the accumulation dtype), the padding mask as uint8 (or None) and
    the empty (B, H, Tq, Tk) pattern."""
    q, k = q.contiguous(), k.contiguous()
    ad = acc_dtype(q.dtype)
    out = torch.empty(*q.shape[:3], k.shape[2], dtype=ad, device=q.device)
    pad = kpm.contiguous().view(torch.uint8) if kpm is not None else None
    return q, k, lse.to(ad).contiguous(), pad, out


def tokens_output(layers: list[torch.Tensor], w: torch.Tensor):
    """persona_tokens' operands: w with each layer's rows contiguous, the layer tables, and the
    empty (L, B, T, P) output in w's dtype."""
    if not w[0].is_contiguous():
        w = w.contiguous()
    B, T, _ = layers[0].shape
    out = torch.empty(len(layers), B, T, w.shape[1], dtype=w.dtype, device=layers[0].device)
    return (w, *device_layer_table(layers), out)
