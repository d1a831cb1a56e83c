"""Head detector scores (TransformerLens ``detect_head``), computed without any (T, T) matrix.

For one sequence and one head, TransformerLens compares the attention pattern A (T x T) with a
0/1 detection pattern D of the head kind (docs/decisions/attention-head-scores-tl.md):

- "mul": sum(A' * D) / sum(A'), where A' is A with column 0 (``exclude_bos``) and/or the
  diagonal (``exclude_current_token``) set to 0;
- "abs": 1 - sum(|A - D| with the same entries zeroed) / T (TransformerLens rounds this to
  3 decimals; we return it unrounded).

Both only need, per query i, the mass of A on the rule's keys (m_i), on key 0 (f_i) and on
key i (c_i), plus how many keys the rule selects (n_i) and whether it selects keys 0 and i:
row i of |A - D| sums to (1 - m_i) + (n_i - m_i), and the excluded entries are
|f_i - D_i0| and |c_i - D_ii|. One ``attention_stats`` pass per layer gives m, f and c.
Scores are averaged over the batch, as detect_head averages over a list of prompts.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from pyinterp import ops
from pyinterp.attention._qk import for_each_layer, n_layers_heads

KINDS = {"previous_token": "prev", "duplicate_token": "duplicate", "induction": "induction"}
# TransformerLens's names for the same kinds
_ALIASES = {"previous_token_head": "previous_token", "duplicate_token_head": "duplicate_token",
            "induction_head": "induction"}
MODES = ("mul", "abs")


def earlier_count(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): how many positions j < i hold the same token as position i (O(T log T))."""
    B, T = tokens.shape
    sorted_tok, order = torch.sort(tokens, dim=-1, stable=True)
    ar = torch.arange(T, device=tokens.device).expand(B, T)
    start = torch.ones_like(sorted_tok, dtype=torch.bool)
    start[:, 1:] = sorted_tok[:, 1:] != sorted_tok[:, :-1]
    group_start = torch.cummax(torch.where(start, ar, torch.zeros_like(ar)), dim=-1).values
    count = torch.empty_like(ar)
    count.scatter_(1, order, ar - group_start)
    return count


def rule_geometry(kind: str, tokens: torch.Tensor):
    """For the detection pattern of ``kind``: per query, the number of selected keys n_i and
    whether key 0 (d0_i) and key i (dd_i) are selected. Each (B, T) float."""
    B, T = tokens.shape
    pos = torch.arange(T, device=tokens.device).expand(B, T)
    zeros = torch.zeros(B, T, dtype=torch.bool, device=tokens.device)
    if kind == "previous_token":
        n = (pos >= 1)
        d0 = pos == 1
        dd = zeros
    elif kind == "duplicate_token":
        n = earlier_count(tokens)
        d0 = (pos >= 1) & (tokens == tokens[:, :1])
        dd = zeros
    elif kind == "induction":
        # keys 1 <= j <= i with tokens[j-1] == tokens[i]: as many as earlier copies of tokens[i]
        n = earlier_count(tokens)
        d0 = zeros
        dd = torch.zeros_like(zeros)
        dd[:, 1:] = tokens[:, 1:] == tokens[:, :-1]
    else:
        raise ValueError(f"kinds: unknown head kind {kind!r}; expected one of {tuple(KINDS)}")
    return n.to(torch.float64), d0.to(torch.float64), dd.to(torch.float64)


def scores_from_stats(kind: str, mode: str, tokens: torch.Tensor, mass: torch.Tensor,
                      first: Optional[torch.Tensor], self_: Optional[torch.Tensor],
                      exclude_bos: bool, exclude_current_token: bool) -> torch.Tensor:
    """Per-sequence head scores (B, H) from per-query statistics (B, H, T) of one layer."""
    T = tokens.shape[1]
    n, d0, dd = (x[:, None, :] for x in rule_geometry(kind, tokens))
    m = mass.to(torch.float64)
    if mode == "mul":
        num = m
        den = torch.ones_like(m)
        if exclude_bos:
            f = first.to(torch.float64)
            num = num - f * d0
            den = den - f
        if exclude_current_token:
            c = self_.to(torch.float64)
            num = num - c * dd
            den = den - c
        if exclude_bos and exclude_current_token:
            den[..., 0] += self_[..., 0].to(torch.float64)  # A[0, 0] is both key 0 and key i
        return num.sum(-1) / den.sum(-1)
    row = (1 - m) + (n - m)
    if exclude_bos:
        row = row - (first.to(torch.float64) - d0).abs()
    if exclude_current_token:
        row = row - (self_.to(torch.float64) - dd).abs()
    if exclude_bos and exclude_current_token:
        row[..., 0] += (self_[..., 0].to(torch.float64) - dd[..., 0]).abs()
    return 1 - row.sum(-1) / T


def head_scores(model, tokens: torch.Tensor,
                kinds: Sequence[str] = ("previous_token", "duplicate_token", "induction"),
                mode: str = "mul", exclude_bos: bool = False, exclude_current_token: bool = False,
                *, backend: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """TransformerLens head-detector scores for every layer and head.

    model: a hooked model (pyinterp Transformer, ``from_hf`` adapter, TransformerLens
    HookedTransformer); tokens: (B, T) int with T >= 2, used as given (prepend BOS yourself
    where TransformerLens's ``to_tokens`` would); kinds: any of "previous_token",
    "duplicate_token", "induction"; mode: "mul" or "abs".

    Returns kind -> (n_layers, n_heads) float32 tensor: the mean over the batch of
    detect_head's per-sequence score. The statistics come from hook_q / hook_k through
    :func:`pyinterp.ops.attention_stats`, so no (T, T) pattern is built and the model keeps its
    fast attention.
    """
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(_ALIASES.get(k, k) for k in kinds)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"kinds: unknown head kind {k!r}; expected one of {tuple(KINDS)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, v in (("exclude_bos", exclude_bos), ("exclude_current_token", exclude_current_token)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    if not isinstance(tokens, torch.Tensor) or tokens.dtype not in ops.attention.INT_DTYPES:
        raise TypeError("tokens must be an integer torch.Tensor of shape (B, T)")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (B, T), got {tuple(tokens.shape)}")
    if tokens.shape[0] < 1 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must hold at least one sequence of T >= 2, got {tuple(tokens.shape)}")
    L, H = n_layers_heads(model)
    rules = sorted({KINDS[k] for k in kinds})
    if exclude_bos:
        rules.append("first")
    if exclude_current_token:
        rules.append("offset:0")
    out = {k: torch.zeros(L, H, dtype=torch.float64) for k in kinds}
    tok_cpu = tokens.detach().to(torch.int64)

    def on_layer(layer, q, k, scale):
        st = ops.attention_stats(q, k, tokens.to(q.device), tuple(rules), scale=scale,
                                 backend=backend)
        first = st.mass["first"].cpu() if exclude_bos else None
        self_ = st.mass["offset:0"].cpu() if exclude_current_token else None
        for kind in kinds:
            per_seq = scores_from_stats(kind, mode, tok_cpu.cpu(), st.mass[KINDS[kind]].cpu(),
                                        first, self_, exclude_bos, exclude_current_token)
            out[kind][layer] = per_seq.mean(0)

    for_each_layer(model, tokens, on_layer)
    return {k: v.to(torch.float32) for k, v in out.items()}
