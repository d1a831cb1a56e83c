"""The kernel API: validated ops that dispatch to the backend in force.

Each family lives in its own package (public ops in ``__init__``, its autograd Functions and
torch.library registration in ``function.py``); all take and return torch tensors, accept
float32, float16 and bfloat16 (accumulating in float32) and float64 (for gradcheck). Every op
is also ``torch.ops.pyinterp.<op>`` (docs/architecture.md).
"""
from pyinterp.ops.attention import AttentionStats, attention_pattern, attention_stats
from pyinterp.ops.jumprelu import jumprelu_gate, jumprelu_l0, jumprelu_select
from pyinterp.ops.multi_decode import multi_decode
from pyinterp.ops.persona import persona_pool, persona_project
from pyinterp.ops.sae import (
    batchtopk_encode,
    dense_from_sparse,
    sparse_decode,
    threshold_encode,
    topk_encode,
    update_activity,
)
from pyinterp.ops.solu import solu, solu_ln

__all__ = [
    "solu", "solu_ln",
    "topk_encode", "sparse_decode", "threshold_encode", "batchtopk_encode", "dense_from_sparse",
    "update_activity",
    "attention_stats", "attention_pattern", "AttentionStats",
    "persona_project", "persona_pool",
    "multi_decode",
    "jumprelu_select", "jumprelu_gate", "jumprelu_l0",
]
