"""The kernel API: validated ops that dispatch to the backend in force.

Each family lives in its own module; all take and return torch tensors, accept float32,
float16 and bfloat16 (accumulating in float32) and float64 (for gradcheck).
"""
from pyinterp.ops.solu import solu, solu_ln

__all__ = ["solu", "solu_ln"]
