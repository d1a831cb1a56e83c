"""Attention statistics and patterns, pure torch (the oracle). Materialises (Tq, Tk) scores.

Backend interface shared by every backend (arguments already validated by pyinterp.ops):

- ``attention_stats(q, k, tokens, rules, causal, kpm, scale, q_offset)``: q (B, H, Tq, d) are
  the queries at positions q_offset .. q_offset + Tq - 1; k (B, H_kv, Tk, d); tokens (B, Tk) or
  None; rules: tuple of pyinterp.ops.attention.Rule; kpm (B, Tk) bool (True = padding) or None.
  Returns (lse, entropy, mass): (B, H, Tq), (B, H, Tq), (R, B, H, Tq) in the accumulation dtype.
- ``attention_pattern(q, k, lse, causal, kpm, scale, q_offset)`` -> (B, H, Tq, Tk) = exp(s - lse)
  on attended keys, 0 elsewhere (k has one head per q head or H_kv dividing H).
"""
from __future__ import annotations

import torch

from pyinterp.reference import compute_dtype


def _expand_kv(k: torch.Tensor, H: int) -> torch.Tensor:
    group = H // k.shape[1]
    return k if group == 1 else k.repeat_interleave(group, dim=1)


def valid_keys(B, Tq, Tk, causal, kpm, q_offset, device) -> torch.Tensor:
    """(B, Tq, Tk) bool: which keys each query attends to."""
    qpos = torch.arange(q_offset, q_offset + Tq, device=device)
    kpos = torch.arange(Tk, device=device)
    valid = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if causal:
        valid = kpos[None, :] <= qpos[:, None]
    valid = valid.expand(B, Tq, Tk)
    if kpm is not None:
        valid = valid & ~kpm[:, None, :]
    return valid


def scores(q, k, causal, kpm, scale, q_offset):
    """Masked scaled scores (B, H, Tq, Tk) in the accumulation dtype (-inf where not attended)."""
    cd = compute_dtype(q.dtype)
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    s = torch.matmul(q.to(cd), _expand_kv(k, H).to(cd).transpose(-1, -2)) * scale
    valid = valid_keys(B, Tq, Tk, causal, kpm, q_offset, q.device)
    return s.masked_fill(~valid[:, None], float("-inf"))


def rule_mask(rule, tokens, B, Tq, Tk, q_offset, device) -> torch.Tensor:
    """(B, Tq, Tk) bool: the keys ``rule`` selects for each query (before attention masking)."""
    qpos = torch.arange(q_offset, q_offset + Tq, device=device)[:, None]
    kpos = torch.arange(Tk, device=device)[None, :]
    if rule.kind == "offset":
        return (kpos == qpos - rule.n).expand(B, Tq, Tk)
    if rule.kind == "pos":
        return (kpos == rule.n).expand(B, Tq, Tk)
    tq = tokens[:, q_offset:q_offset + Tq]
    if rule.kind == "duplicate":
        return (tokens[:, None, :] == tq[:, :, None]) & (kpos < qpos)
    if rule.kind == "induction":
        prev_tok = torch.roll(tokens, 1, dims=1)  # prev_tok[j] = tokens[j - 1]; j = 0 masked below
        return (prev_tok[:, None, :] == tq[:, :, None]) & (kpos >= 1) & (kpos <= qpos)
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def attention_stats(q, k, tokens, rules, causal, kpm, scale, q_offset):
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    s = scores(q, k, causal, kpm, scale, q_offset)
    lse = torch.logsumexp(s, dim=-1)
    finite = torch.isfinite(lse)
    p = torch.exp(s - torch.where(finite, lse, torch.zeros_like(lse))[..., None])
    p = torch.where(finite[..., None], p, torch.zeros_like(p))
    plogp = torch.where(p > 0, p * (s - lse[..., None]), torch.zeros_like(p))
    ent = -plogp.sum(-1)
    mass = torch.stack([
        (p * rule_mask(r, tokens, B, Tq, Tk, q_offset, q.device)[:, None]).sum(-1) for r in rules
    ]) if rules else p.new_zeros((0, B, H, Tq))
    # Non-finite scores (docs/decisions/nan-semantics.md): a NaN or +inf among a query's
    # attended scores makes its lse NaN / +inf and its entropy and masses NaN.
    bad = torch.isnan(lse) | (lse == float("inf"))
    ent = ent.masked_fill(bad, float("nan"))
    mass = mass.masked_fill(bad, float("nan"))
    return lse, ent, mass


def attention_pattern(q, k, lse, causal, kpm, scale, q_offset):
    s = scores(q, k, causal, kpm, scale, q_offset)
    # Keys with score -inf (masked, or from non-finite inputs) get 0; NaN propagates.
    return torch.where(s == float("-inf"), torch.zeros_like(s), torch.exp(s - lse[..., None]))
