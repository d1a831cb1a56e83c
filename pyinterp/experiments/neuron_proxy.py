"""An automated monosemanticity proxy for neurons or dictionary features (reusable).

The SoLU paper (Elhage et al. 2022) had people judge a neuron interpretable when at least 80%
of its ~20 top-activating snippets fit one rule. Our automated stand-in uses the simplest rule,
"the same current token":

  * ``top_activations``: the k positions where a unit fires most (over a token corpus);
  * ``token_concentration``: the fraction of those k positions whose token is the unit's most
    frequent top token (1 = always the same token);
  * ``token_entropy``: normalised entropy of the token distribution over the top k (0 = one token);
  * ``monosemantic_fraction``: the fraction of units whose concentration is >= 0.8 (the paper's
    80% criterion), among units that fire at all.

The same functions serve neurons (acts from ``hook_post``/``hook_mid``) and SAE features
(acts = dictionary codes), so papers 1 and 5 use one yardstick.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch


def top_activations(acts: torch.Tensor, k: int = 20):
    """acts: (N, d) activations of d units at N token positions -> (values, positions), each (k, d)."""
    if acts.ndim != 2:
        raise ValueError(f"acts must be (N, d), got shape {tuple(acts.shape)}")
    k = min(k, acts.shape[0])
    v, i = acts.float().topk(k, dim=0)
    return v, i


def token_concentration(top_tokens: torch.Tensor) -> torch.Tensor:
    """top_tokens: (k, d) token ids at each unit's top positions -> (d,) share of the modal token."""
    mode = top_tokens.mode(dim=0).values  # (d,)
    return (top_tokens == mode[None]).float().mean(0)


def token_entropy(top_tokens: torch.Tensor) -> torch.Tensor:
    """(k, d) -> (d,) entropy of each unit's top-token distribution divided by log(k)."""
    k, d = top_tokens.shape
    out = torch.empty(d)
    for j in range(d):
        _, counts = top_tokens[:, j].unique(return_counts=True)
        p = counts.float() / k
        out[j] = -(p * p.log()).sum() / torch.log(torch.tensor(float(max(k, 2))))
    return out


def unit_report(acts: torch.Tensor, tokens: torch.Tensor, k: int = 20, threshold: float = 0.8) -> Dict:
    """Everything the pages need for one layer of units.

    acts: (N, d); tokens: (N,) the token at each position. Returns concentration (d,),
    entropy (d,), alive (d,) bool (max activation > 0), monosemantic_fraction (over alive
    units), top_values/top_positions (k, d).
    """
    if tokens.shape[0] != acts.shape[0]:
        raise ValueError(f"tokens must have {acts.shape[0]} positions, got {tokens.shape[0]}")
    v, i = top_activations(acts, k)
    top_tok = tokens[i]
    conc = token_concentration(top_tok)
    ent = token_entropy(top_tok)
    alive = v[0] > 1e-6
    frac = float((conc[alive] >= threshold).float().mean()) if bool(alive.any()) else 0.0
    return {"concentration": conc, "entropy": ent, "alive": alive, "monosemantic_fraction": frac,
            "mean_concentration": float(conc[alive].mean()) if bool(alive.any()) else 0.0,
            "top_values": v, "top_positions": i}


def participation_ratio(acts: torch.Tensor) -> torch.Tensor:
    """Per position, (Σ|a|)² / (d Σ a²) in (0, 1]: the fraction of units effectively active
    (1 = all equal, 1/d = one unit). acts: (N, d) -> (N,)."""
    a = acts.float().abs()
    return a.sum(-1) ** 2 / (a.shape[-1] * (a ** 2).sum(-1)).clamp_min(1e-12)


def contexts_html(decode_token, rows: torch.Tensor, acts: torch.Tensor, unit: int, positions: Sequence[int],
                  width: int = 12, n_ctx: int = None) -> List[str]:
    """HTML snippets of the contexts around flat ``positions`` for one unit.

    rows: (B, T) tokens; acts: (B*T, d) flattened the same way; decode_token(id) -> str.
    Each snippet shows up to ``width`` tokens before and 3 after, shaded by the unit's activation.
    """
    from pyinterp.experiments.report import highlight_tokens

    T = rows.shape[1]
    a = acts[:, unit].view(rows.shape)
    vmax = float(a.max())
    out = []
    for p in positions:
        b, t = divmod(int(p), T)
        lo, hi = max(0, t - width), min(T, t + 4)
        toks = [decode_token(int(x)) for x in rows[b, lo:hi]]
        out.append(highlight_tokens(toks, a[b, lo:hi].tolist(), vmax, focus=t - lo))
    return out
