"""pyinterp on TransformerLens ``HookedTransformer`` models, by hook name.

    from pyinterp.integrations import transformer_lens as ptl
    scores = ptl.head_scores(hooked_transformer, tokens)          # pyinterp attention kernels
    codes = ptl.sae_codes(hooked_transformer, tokens, sae)        # pyinterp or SAELens SAE
    with ptl.spliced(hooked_transformer, sae):                    # SAE reconstruction in place
        loss = hooked_transformer(tokens, return_type="loss")
    ptl.apply(hooked_transformer)     # SoLU-LN MLPs on pyinterp's fused kernel (revert() undoes)

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


# -- apply / revert: the fused SoLU-LN kernel inside TransformerLens MLPs ------------------------
_ORIGINAL_FORWARD = "_pyinterp_original_forward"
_FUSED_DTYPES = (torch.float32, torch.float64)


def _has_hooks(point) -> bool:
    return bool(point._forward_hooks) or bool(point._backward_hooks) or bool(
        getattr(point, "_backward_pre_hooks", None))


def _solu_ln_mlps(model):
    """The MLPs of ``model`` whose activation is SoLU followed by a LayerNorm (TL's "solu_ln")."""
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        if (mlp is not None and getattr(mlp.cfg, "act_fn", None) == "solu_ln"
                and getattr(mlp, "hook_mid", None) is not None and getattr(mlp, "ln", None) is not None
                and hasattr(mlp, "W_in") and hasattr(mlp, "W_out")):
            yield mlp


def _fused_forward(mlp):
    """TransformerLens's MLP.forward with act + LN as one pyinterp kernel. Every hook point still
    runs: hook_pre (kernel input), hook_mid (the kernel's pre-LN output; a hook that changes it
    makes the LN run on the changed value), hook_post (kernel output). The kernel does not
    produce ln.hook_scale / ln.hook_normalized or the gradients backward hooks on hook_mid need:
    with such hooks attached the block runs TransformerLens's own code."""
    from transformer_lens.utilities.addmm import batch_addmm

    from pyinterp import ops

    original = mlp.__dict__[_ORIGINAL_FORWARD]

    def forward(x):
        ln = mlp.ln
        if (_has_hooks(ln.hook_scale) or _has_hooks(ln.hook_normalized)
                or bool(mlp.hook_mid._backward_hooks) or x.dtype not in _FUSED_DTYPES):
            return original(x)
        hook_in = getattr(mlp, "hook_in", None)  # SAELens's HookedSAETransformer adds it
        if hook_in is not None:
            x = hook_in(x)
        pre = mlp.hook_pre(batch_addmm(mlp.b_in, mlp.W_in, x))
        w, b = getattr(ln, "w", None), getattr(ln, "b", None)  # LNPre: no affine
        if _has_hooks(mlp.hook_mid):
            y, mid = ops.solu_ln(pre, w, b, eps=ln.eps, return_pre_ln=True)
            mid = mid.clone()  # hooks may edit it in place (the kernel's output is a view)
            version = mid._version
            seen = mlp.hook_mid(mid)
            if seen is not mid or mid._version != version:  # the hook edited the neurons
                y = ln(seen)
        else:
            y = ops.solu_ln(pre, w, b, eps=ln.eps)
        return batch_addmm(mlp.b_out, mlp.W_out, mlp.hook_post(y))
    return forward


def apply(model):
    """Make a TransformerLens ``HookedTransformer``'s SoLU-LN MLPs run ``pyinterp.ops.solu_ln``
    (Liger-style: patches this model's MLP modules in place, returns the model). Logits match
    TransformerLens to float tolerance; every hook point stays (see ``_fused_forward`` for when a
    block falls back to TransformerLens's own code). Idempotent; :func:`revert` undoes it."""
    _require()
    mlps = list(_solu_ln_mlps(model))
    for mlp in mlps:
        if _ORIGINAL_FORWARD in mlp.__dict__:
            continue
        mlp.__dict__[_ORIGINAL_FORWARD] = mlp.forward
        mlp.forward = _fused_forward(mlp)
    model.__dict__["_pyinterp_applied"] = len(mlps)
    return model


def revert(model):
    """Undo :func:`apply`; returns the model."""
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        if mlp is not None and _ORIGINAL_FORWARD in mlp.__dict__:
            del mlp.__dict__["forward"]
            del mlp.__dict__[_ORIGINAL_FORWARD]
    model.__dict__.pop("_pyinterp_applied", None)
    return model


def applied(model) -> int:
    """How many MLPs :func:`apply` switched to the fused kernel (0 when not applied)."""
    return int(model.__dict__.get("_pyinterp_applied", 0))
