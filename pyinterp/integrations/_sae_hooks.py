"""Hook functions that run an SAE on an activation by hook name: a pyinterp dictionary, or an
SAELens ``SAE`` object (its code through pyinterp's kernels, without patching the object)."""
from __future__ import annotations

from typing import Callable, Dict

import torch

from pyinterp.sae.any_sae import encode_at, hook_name_of  # noqa: F401 (re-exported)


def splice_hook(sae, keep_error: bool = False) -> Callable:
    """A hook replacing the activation by the SAE reconstruction (``keep_error``: add back
    x - x_hat, so only interventions on features change the output)."""
    def fn(x, hook):
        x_hat = sae(x).to(x.dtype)  # both kinds take (..., d_in) (SAELens hook_z SAEs their own)
        return x_hat + (x - x_hat).detach() if keep_error else x_hat
    return fn


def code_recorder(sae, out: Dict[str, torch.Tensor]) -> Callable:
    """A read-only hook storing the sparse code in ``out[hook.name] = (values, indices)``."""
    def fn(x, hook):
        with torch.no_grad():
            out[hook.name] = encode_at(sae, x.detach())
        return None
    return fn
