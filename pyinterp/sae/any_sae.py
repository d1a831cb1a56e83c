"""Functions that take either kind of SAE object: a pyinterp dictionary or an SAELens ``SAE``
(duck-typed; sae-lens is never imported here)."""
from __future__ import annotations

from typing import Optional

import torch


def hook_name_of(sae, hook_name: Optional[str] = None) -> str:
    """``hook_name``, else the SAE's own: pyinterp ``sae.hook_name``, SAELens 6
    ``sae.cfg.metadata.hook_name``, SAELens 5 ``sae.cfg.hook_name``."""
    cfg = getattr(sae, "cfg", None)
    name = (hook_name or getattr(sae, "hook_name", None)
            or getattr(getattr(cfg, "metadata", None), "hook_name", None)
            or getattr(cfg, "hook_name", None))
    if not name:
        raise ValueError("hook_name is needed (the SAE does not record one: pyinterp's "
                         "cfg.hook_name or SAELens's cfg.metadata.hook_name)")
    return name


def _is_sae_lens(sae) -> bool:
    return hasattr(sae, "process_sae_in") and hasattr(sae, "W_enc")


def encode_at(sae, x: torch.Tensor):
    """x: (..., d_in) -> (values, indices), each (..., width): the SAE's sparse code."""
    if _is_sae_lens(sae):
        from pyinterp.sae.acceleration import sparse_code

        return sparse_code(sae, x)
    lead = x.shape[:-1]
    v, i = sae.encode(x.reshape(-1, x.shape[-1]))
    return v.reshape(*lead, -1), i.reshape(*lead, -1)
