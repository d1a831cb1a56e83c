"""Attention analysis on top of the attention ops: head scores, induction / copying / ICL
scores and pattern views, for pyinterp's models, Hugging Face models (through
:func:`pyinterp.models.from_hf`) and TransformerLens HookedTransformers.

    from pyinterp import attention
    scores = attention.head_scores(model, tokens)              # TransformerLens detect_head, O(T) memory
    ind = attention.induction_scores(model, seq_len=32).scores  # (n_layers, n_heads)
    cop = attention.copying_scores(model)                      # OV-circuit eigenvalue score
    icl = attention.icl_scores(model, tokens)["score"]
    attention.save_html(attention.pattern_view(model, tokens[0], [(1, 0)]), "patterns.html")
"""
from pyinterp.attention.heads import head_scores
from pyinterp.attention.scores import (
    InductionResult,
    copying_scores,
    icl_scores,
    induction_scores,
    per_token_loss,
)
from pyinterp.attention.view import pattern_view, save_circuitsvis_json, save_html

__all__ = [
    "InductionResult",
    "copying_scores",
    "head_scores",
    "icl_scores",
    "induction_scores",
    "pattern_view",
    "per_token_loss",
    "save_circuitsvis_json",
    "save_html",
]
