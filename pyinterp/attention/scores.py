"""Induction, copying and in-context-learning scores (Olsson et al. 2022; Elhage et al. 2021).

- :func:`induction_scores`: on repeated random tokens (the copy starts at a random offset per
  row, so positional attention cannot fake it), the attention mass each head puts on the
  token after an earlier copy of the current token ("induction" rule: prefix matching),
  averaged over the query positions of the second copy. (n_layers, n_heads).
- :func:`copying_scores`: eigenvalues of each head's OV circuit W_E W_V W_O W_U (d_vocab x
  d_vocab, rank <= d_head). Its non-zero eigenvalues are those of the d_head x d_head matrix
  W_O W_U W_E W_V, so the full circuit is never built. ``kind="ratio"`` (default):
  sum(Re lambda) / sum(|lambda|), in [-1, 1], 1 for a pure copying head (A Mathematical
  Framework, Elhage et al. 2021); ``kind="fraction"``: the fraction of the d_head eigenvalues
  with positive real part.
- :func:`icl_scores`: loss at a late token minus loss at an early token (negative = the model
  uses the context). The paper uses tokens 500 and 50; by default we scale them to the
  context length as round(T * 500 / 512) and round(T * 50 / 512) (T = 512 gives 500 and 50).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from pyinterp import ops
from pyinterp.attention._qk import for_each_layer, n_layers_heads


@dataclass
class InductionResult:
    """scores: (n_layers, n_heads) mean induction mass over second-copy queries; tokens: (B, T)
    the sequences used; mask: (B, T) the query positions averaged over."""

    scores: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


def induction_scores(model, seq_len: int = 32, batch: int = 16, seed: int = 0,
                     n_ctx: Optional[int] = None, bos_token: Optional[int] = None,
                     d_vocab: Optional[int] = None, *, backend: Optional[str] = None) -> InductionResult:
    """Prefix-matching (induction) score of every head on repeated random tokens.

    Sequences are ``[bos] noise r r noise`` with r of ``seq_len`` random tokens at a random
    offset (pyinterp.data.synthetic.repeated_tokens); ``n_ctx`` defaults to 2 * seq_len + 8.
    """
    from pyinterp.data.synthetic import repeated_tokens

    vocab = int(d_vocab or model.cfg.d_vocab)
    total = n_ctx if n_ctx is not None else 2 * seq_len + 8 + (bos_token is not None)
    data = repeated_tokens(batch, seq_len, vocab, seed=seed, n_ctx=total, bos_token=bos_token,
                           low=1 if bos_token == 0 else 0)
    tokens = data.tokens.to(_device_of(model))
    mask = data.induction_mask().to(torch.float64)
    L, H = n_layers_heads(model)
    scores = torch.zeros(L, H, dtype=torch.float64)

    def on_layer(layer, q, k, scale):
        st = ops.attention_stats(q, k, tokens, ("induction",), scale=scale, backend=backend)
        m = st.mass["induction"].cpu().to(torch.float64)  # (B, H, T)
        scores[layer] = (m * mask[:, None]).sum((0, 2)) / mask.sum()

    for_each_layer(model, tokens, on_layer)
    return InductionResult(scores.to(torch.float32), data.tokens, data.induction_mask())


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _ov_weights(model):
    """W_E (V, d), W_U (d, V), and per layer W_V (H, d, dh), W_O (H, dh, d)."""
    W_E, W_U = model.W_E, model.W_U
    blocks = getattr(model, "blocks", None)
    layers = []
    for block in blocks or ():
        attn = getattr(block, "attn", None)
        W_V, W_O = getattr(attn, "W_V", None), getattr(attn, "W_O", None)
        if W_V is None or W_O is None:
            layers = None
            break
        if W_V.shape[0] != W_O.shape[0]:  # grouped-query attention: one V head per group
            W_V = W_V.repeat_interleave(W_O.shape[0] // W_V.shape[0], dim=0)
        layers.append((W_V, W_O))
    if not layers:
        raise NotImplementedError(
            "copying_scores needs W_E, W_U and blocks[i].attn.W_V / W_O (pyinterp Transformer, "
            f"TransformerLens, or from_hf models); {type(model).__name__} does not expose them")
    return W_E, W_U, layers


def copying_scores(model, kind: str = "ratio") -> torch.Tensor:
    """(n_layers, n_heads) copying score of each head's OV circuit (see the module docstring)."""
    if kind not in ("ratio", "fraction"):
        raise ValueError(f"kind must be 'ratio' or 'fraction', got {kind!r}")
    W_E, W_U, layers = _ov_weights(model)
    with torch.no_grad():
        UE = W_U.double() @ W_E.double()  # (d_model, d_model)
        out = []
        for W_V, W_O in layers:
            M = W_O.double() @ UE @ W_V.double()  # (H, dh, dh)
            ev = torch.linalg.eigvals(M)  # (H, dh) complex
            if kind == "ratio":
                out.append(ev.real.sum(-1) / ev.abs().sum(-1).clamp_min(1e-300))
            else:
                out.append((ev.real > 0).double().mean(-1))
    return torch.stack(out).to(torch.float32)


def per_token_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T - 1) next-token cross entropy (nats) at positions 1..T-1."""
    with torch.no_grad():
        logits = model(tokens)
        if isinstance(logits, tuple):
            logits = logits[0]
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        return -logp.gather(-1, tokens[:, 1:, None].to(logp.device)).squeeze(-1)


def icl_scores(model, tokens: torch.Tensor, early: Optional[int] = None,
               late: Optional[int] = None) -> dict:
    """In-context-learning score: loss(token ``late``) - loss(token ``early``).

    tokens: (B, T). ``early``/``late`` are token positions (1 <= early < late <= T - 1, the
    loss at position t predicts tokens[t]); defaults round(T * 50 / 512) and
    round(T * 500 / 512) (clamped to that range). Returns {"score": mean over the batch,
    "per_example": (B,), "early": int, "late": int, "loss_curve": (T - 1,) mean loss}.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        raise ValueError("tokens must be a (B, T) integer tensor")
    T = tokens.shape[1]
    if T < 3:
        raise ValueError(f"tokens must have T >= 3 positions for an ICL score, got T = {T}")
    early = max(1, round(T * 50 / 512)) if early is None else int(early)
    late = min(T - 1, round(T * 500 / 512)) if late is None else int(late)
    if not 1 <= early < late <= T - 1:
        raise ValueError(f"need 1 <= early < late <= T - 1 = {T - 1}, got early={early}, late={late}")
    loss = per_token_loss(model, tokens).cpu()  # loss[:, t - 1] predicts tokens[:, t]
    per_example = loss[:, late - 1] - loss[:, early - 1]
    return {"score": float(per_example.mean()), "per_example": per_example, "early": early,
            "late": late, "loss_curve": loss.mean(0)}
