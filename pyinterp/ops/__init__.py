"""The kernel API: validated ops that dispatch to the backend in force.

Each family lives in its own module; all take and return torch tensors, accept float32,
float16 and bfloat16 (accumulating in float32) and float64 (for gradcheck).
"""
from pyinterp.ops.solu import solu, solu_ln

__all__ = ["solu", "solu_ln"]
from pyinterp.ops.sae import (  # noqa: E402
    batchtopk_encode, dense_from_sparse, sparse_decode, threshold_encode, topk_encode, update_activity,
)

__all__ += ["topk_encode", "sparse_decode", "threshold_encode", "batchtopk_encode",
            "dense_from_sparse", "update_activity"]
from pyinterp.ops.attention import AttentionStats, attention_pattern, attention_stats  # noqa: E402

__all__ += ["attention_stats", "attention_pattern", "AttentionStats"]
from pyinterp.ops.persona import persona_pool, persona_project  # noqa: E402

__all__ += ["persona_project", "persona_pool"]
from pyinterp.ops.multi_decode import multi_decode  # noqa: E402

__all__ += ["multi_decode"]
from pyinterp.ops.jumprelu import jumprelu_gate, jumprelu_l0, jumprelu_select  # noqa: E402

__all__ += ["jumprelu_select", "jumprelu_gate", "jumprelu_l0"]
