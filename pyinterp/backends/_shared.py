"""Launcher-side helpers several backends share (output allocation, device tables), so each
backend's launcher holds only its own launch configuration."""
from __future__ import annotations

import torch

from pyinterp._common import RULE_KINDS, acc_dtype, device_layer_table, to_device_async

TOKEN_RULES = (RULE_KINDS["duplicate"], RULE_KINDS["induction"])


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def token_splits(T: int, splits: int, tile: int = 1):
    """(splits, tokens per split) for cutting T tokens into about ``splits`` parts of whole
    ``tile``s, none of them empty (persona_pool's partial sums)."""
    per_split = cdiv(cdiv(T, splits), tile) * tile
    return cdiv(T, per_split), per_split


def padding_mask(kpm):
    """The key padding mask as uint8 for the kernels (None stays None)."""
    return kpm.contiguous().view(torch.uint8) if kpm is not None else None


def stats_operands(q: torch.Tensor, k: torch.Tensor, tokens, kinds, ns, kpm):
    """attention_stats' operands: contiguous q and k; the tokens as int64 when a rule needs them
    (else None); the padding mask (``padding_mask``); the rules as device tensors (kinds int32,
    ns int64; one dummy entry when there are no rules); the empty (lse, entropy, mass) outputs."""
    q, k = q.contiguous(), k.contiguous()
    B, H, Tq, _ = q.shape
    ad, dev = acc_dtype(q.dtype), q.device
    outputs = (torch.empty(B, H, Tq, dtype=ad, device=dev), torch.empty(B, H, Tq, dtype=ad, device=dev),
               torch.empty(len(kinds), B, H, Tq, dtype=ad, device=dev))
    needs_tokens = any(c in TOKEN_RULES for c in kinds)
    tok = tokens.to(torch.int64).contiguous() if needs_tokens else None
    kinds_t = to_device_async(list(kinds) or [0], torch.int32, dev)
    ns_t = to_device_async(list(ns) or [0], torch.int64, dev)
    return q, k, tok, padding_mask(kpm), kinds_t, ns_t, outputs


def pattern_output(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, kpm):
    """Contiguous q, k, lse (in the accumulation dtype), the padding mask (``padding_mask``) and
    the empty (B, H, Tq, Tk) pattern."""
    q, k = q.contiguous(), k.contiguous()
    ad = acc_dtype(q.dtype)
    out = torch.empty(*q.shape[:3], k.shape[2], dtype=ad, device=q.device)
    return q, k, lse.to(ad).contiguous(), padding_mask(kpm), out


def tokens_output(layers: list[torch.Tensor], w: torch.Tensor):
    """persona_tokens' operands: w with each layer's rows contiguous, the layer tables, and the
    empty (L, B, T, P) output in w's dtype."""
    if not w[0].is_contiguous():
        w = w.contiguous()
    B, T, _ = layers[0].shape
    out = torch.empty(len(layers), B, T, w.shape[1], dtype=w.dtype, device=layers[0].device)
    return (w, *device_layer_table(layers), out)
