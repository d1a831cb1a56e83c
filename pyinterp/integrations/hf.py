"""pyinterp ops on Hugging Face ``transformers`` models through hooks.

The hooks come from :func:`pyinterp.models.from_hf`, which attaches PyTorch hooks to the HF
modules only while a pyinterp hook is registered; the functions here register pyinterp's
kernels there (SoLU is not used by HF architectures, so the relevant ops are the attention
statistics, the sparse SAE kernels and persona projections):

    from pyinterp.integrations import hf as phf
    model = phf.wrap(hf_model)                          # same object for all calls below
    scores = phf.head_scores(model, tokens)             # attention_stats on q/k after rotary
    with phf.spliced(model, sae, "blocks.3.hook_resid_post"):
        loss = model.loss(tokens)
    with phf.register(model, "blocks.3.hook_resid_post", my_op):   # any fn(x, hook)
        model(tokens)

Needs ``transformers`` (``pip install 'pyinterp[hf]'``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

from pyinterp.integrations._sae_hooks import code_recorder, hook_name_of, splice_hook


def _require():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("pyinterp.integrations.hf needs Hugging Face transformers: "
                          "pip install 'pyinterp[hf]'") from e
    return transformers


def wrap(model_or_path, **kwargs):
    """:func:`pyinterp.models.from_hf` (a wrapped model is returned unchanged)."""
    _require()
    from pyinterp.models.hf import HookedHF, from_hf

    return model_or_path if isinstance(model_or_path, HookedHF) else from_hf(model_or_path, **kwargs)


@contextlib.contextmanager
def register(model, hook_name, fn: Callable) -> Iterator:
    """Run ``fn(activation, hook) -> tensor | None`` at ``hook_name`` (a name or filter) of a
    wrapped HF model inside the block."""
    model = wrap(model)
    with model.hooks(fwd_hooks=[(hook_name, fn)]):
        yield model


def head_scores(model, tokens: torch.Tensor,
                kinds: Sequence[str] = ("previous_token", "duplicate_token", "induction"), **kwargs):
    """pyinterp's head-detector scores (kind -> (n_layers, n_heads)) of an HF model."""
    from pyinterp import attention

    return attention.head_scores(wrap(model), tokens, kinds, **kwargs)


def sae_codes(model, tokens: torch.Tensor, sae, hook_name: Optional[str] = None):
    """(values, indices), each (B, T, width): the sparse code at ``hook_name`` (default: the
    SAE's own) of a pyinterp or SAELens SAE; the forward stops after the hooked block."""
    from pyinterp.models.hooks import stop_layer

    model = wrap(model)
    name = hook_name_of(sae, hook_name)
    out: Dict[str, tuple] = {}
    stop = stop_layer(model, [name])
    with model.hooks(fwd_hooks=[(name, code_recorder(sae, out))]):
        with torch.no_grad():
            if stop is not None:
                model(tokens, stop_at_layer=stop)  # nothing after the hooked block runs
            else:
                model(tokens, return_type=None)
    return out[name]


@contextlib.contextmanager
def spliced(model, sae, hook_name: Optional[str] = None, keep_error: bool = False) -> Iterator:
    """Inside the block the activation at ``hook_name`` is the SAE's reconstruction (a pyinterp
    or SAELens SAE)."""
    model = wrap(model)
    name = hook_name_of(sae, hook_name)
    with model.hooks(fwd_hooks=[(name, splice_hook(sae, keep_error))]):
        yield model
