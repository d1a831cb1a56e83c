"""SoLU ops: ``solu`` and the fused ``solu_ln`` (Elhage et al. 2022).

SoLU(x) = x * softmax(x) over the last dim. The deployed form is LayerNorm(SoLU(x));
interpretability reads neurons before the LN, so ``solu_ln`` can also return that value.
"""
from __future__ import annotations

from typing import Optional

import torch

from pyinterp.ops import _validate as check
from pyinterp.ops._dispatch import is_oracle, pick
from pyinterp.ops.solu.function import SOLU, SOLU_LN


def solu(x: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """x * softmax(x) over the last dim. x: (..., d) -> (..., d), same dtype."""
    check.tensor("x", x, min_ndim=1, nonempty_last=True)
    name, impl = pick(SOLU, x, backend=backend)
    if is_oracle(name):
        return impl.solu(x)
    return SOLU.apply(name, impl, x)[0]


def solu_ln(
    x: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    return_pre_ln: bool = False,
    *,
    backend: Optional[str] = None,
):
    """LayerNorm(x * softmax(x)) in one fused pass.

    x: (..., d); weight, bias: (d,) or None (no affine). Returns (..., d) in x's dtype, or
    ``(out, pre_ln)`` with ``return_pre_ln=True`` (pre_ln = SoLU(x), TransformerLens's
    ``hook_mid``). Differentiable in x, weight and bias (and through pre_ln).
    """
    check.tensor("x", x, min_ndim=1, nonempty_last=True)
    d = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check.tensor(name, p, ndim=1)
            check.shape(name, p, (d,), "the last dim of x")
    check.same_device(x=x, weight=weight, bias=bias)
    check.positive_float("eps", eps)
    if not isinstance(return_pre_ln, bool):
        raise TypeError(f"return_pre_ln must be a bool, got {type(return_pre_ln).__name__}")
    name, impl = pick(SOLU_LN, x, weight, bias, backend=backend)
    if is_oracle(name):
        return impl.solu_ln(x, weight, bias, float(eps), return_pre_ln)
    y, pre, _ = SOLU_LN.apply(name, impl, x, weight, bias, float(eps), return_pre_ln)
    return (y, pre) if return_pre_ln else y
