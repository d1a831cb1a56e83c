"""SoLU reference (Elhage et al. 2022, "Softmax Linear Units").

SoLU(x) = x * softmax(x) over the last dim; deployed as LayerNorm(SoLU(x)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pyinterp.reference import compute_dtype


def solu(x: torch.Tensor) -> torch.Tensor:
    """x: (..., d) -> (..., d)."""
    xf = x.to(compute_dtype(x.dtype))
    return (xf * torch.softmax(xf, dim=-1)).to(x.dtype)


def solu_ln(x, weight, bias, eps: float = 1e-5, return_pre_ln: bool = False):
    """x: (..., d), weight/bias: (d,) or None -> LN(SoLU(x)) [, SoLU(x)]."""
    cd = compute_dtype(x.dtype)
    xf = x.to(cd)
    pre = xf * torch.softmax(xf, dim=-1)
    w = weight.to(cd) if weight is not None else None
    b = bias.to(cd) if bias is not None else None
    out = F.layer_norm(pre, (x.shape[-1],), w, b, eps).to(x.dtype)
    if return_pre_ln:
        return out, pre.to(x.dtype)
    return out
