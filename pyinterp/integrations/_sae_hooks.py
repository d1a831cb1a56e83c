"""Hook functions that run a pyinterp SAE (sparse kernels) on an activation by hook name."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch


def encode_at(sae, x: torch.Tensor):
    """x: (..., d_in) -> (values, indices), each (..., k): the SAE's sparse code."""
    lead = x.shape[:-1]
    v, i = sae.encode(x.reshape(-1, x.shape[-1]))
    return v.reshape(*lead, -1), i.reshape(*lead, -1)


def splice_hook(sae, keep_error: bool = False) -> Callable:
    """A hook replacing the activation by the SAE reconstruction (``keep_error``: add back
    x - x_hat, so only interventions on features change the output)."""
    def fn(x, hook):
        x_hat = sae(x.reshape(-1, x.shape[-1])).reshape(x.shape).to(x.dtype)
        return x_hat + (x - x_hat).detach() if keep_error else x_hat
    return fn


def code_recorder(sae, out: Dict[str, torch.Tensor]) -> Callable:
    """A read-only hook storing the sparse code in ``out[hook.name] = (values, indices)``."""
    def fn(x, hook):
        with torch.no_grad():
            out[hook.name] = encode_at(sae, x.detach())
        return None
    return fn
