"""pyinterp on TransformerLens ``HookedTransformer`` models, by hook name.

    from pyinterp.integrations import transformer_lens as ptl
    scores = ptl.head_scores(hooked_transformer, tokens)          # pyinterp attention kernels
    codes = ptl.sae_codes(hooked_transformer, tokens, sae)        # pyinterp or SAELens SAE
    with ptl.spliced(hooked_transformer, sae):                    # SAE reconstruction in place
        loss = hooked_transformer(tokens, return_type="loss")

Needs ``transformer-lens`` (``pip install 'pyinterp[peers]'``).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Sequence

import torch

from pyinterp.integrations._sae_hooks import code_recorder, hook_name_of, splice_hook


def _require():
    try:
        import transformer_lens
    except ImportError as e:
        raise ImportError("pyinterp.integrations.transformer_lens needs transformer-lens: "
                          "pip install 'pyinterp[peers]'") from e
    return transformer_lens


def wrap(model):
    """The model with pyinterp's hook API (:func:`pyinterp.models.from_transformer_lens`)."""
    _require()
    from pyinterp.models.tl import from_transformer_lens

    return from_transformer_lens(model)


def head_scores(model, tokens: torch.Tensor,
                kinds: Sequence[str] = ("previous_token", "duplicate_token", "induction"), **kwargs):
    """pyinterp's head-detector scores (kind -> (n_layers, n_heads)) on a HookedTransformer,
    computed from hook_rot_q/hook_rot_k by :func:`pyinterp.attention.head_scores`."""
    _require()
    from pyinterp import attention

    return attention.head_scores(model, tokens, kinds, **kwargs)


def induction_scores(model, seq_len: int = 32, **kwargs):
    """Induction scores on repeated random tokens (:func:`pyinterp.attention.induction_scores`)."""
    _require()
    from pyinterp import attention

    return attention.induction_scores(model, seq_len=seq_len, **kwargs)


def sae_codes(model, tokens: torch.Tensor, sae, hook_name: Optional[str] = None):
    """(values, indices), each (B, T, width): the sparse code of the activation at
    ``hook_name`` (default: the SAE's own) for a pyinterp or SAELens SAE, through pyinterp's
    kernels; the forward stops after the hooked block."""
    _require()
    from pyinterp.models.hooks import stop_layer

    name = hook_name_of(sae, hook_name)
    if name not in model.hook_dict:
        raise ValueError(f"unknown hook name {name!r} for this HookedTransformer")
    out: Dict[str, tuple] = {}
    stop = stop_layer(model, [name])
    kw = {} if stop is None else {"stop_at_layer": stop}
    with torch.no_grad():
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(name, code_recorder(sae, out))], **kw)
    return out[name]


@contextlib.contextmanager
def spliced(model, sae, hook_name: Optional[str] = None, keep_error: bool = False) -> Iterator:
    """Inside the block the activation at ``hook_name`` is replaced by the SAE reconstruction
    (a pyinterp or SAELens SAE)."""
    _require()
    name = hook_name_of(sae, hook_name)
    if name not in model.hook_dict:
        raise ValueError(f"unknown hook name {name!r} for this HookedTransformer")
    with model.hooks(fwd_hooks=[(name, splice_hook(sae, keep_error))]):
        yield model
