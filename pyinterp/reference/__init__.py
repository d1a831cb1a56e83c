"""Pure-torch reference ops: the oracle every backend is tested against.

Low-precision inputs are computed in float32 and cast back, as the kernels do. The oracle
imports nothing else from pyinterp (not even pyinterp._common): it stays an independent
computation (docs/architecture.md).
"""
import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
