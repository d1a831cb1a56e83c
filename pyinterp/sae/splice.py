"""Splicing a dictionary into a model: the replacement hooks and loss recovered.

- SAE: the activation at ``hook_name`` becomes its reconstruction.
- Transcoder: the output hook becomes the transcoder's prediction from the input hook (read
  earlier in the same forward pass).
- CLT (the replacement model of Ameisen et al. 2025, without frozen attention): every target
  hook j becomes sum_{l <= j} f^l W^{l->j} + b_dec[j], each f^l encoded from layer l's input
  *in the spliced run* (so errors compound through the layers, as they do in the model).
- Crosscoder (acausal: every layer's reconstruction needs every layer's input): the hooks
  become the reconstructions computed from a clean pass.

``errors=True`` adds the error terms of a clean pass (clean activation - reconstruction from
clean inputs) to every replacement: the spliced model then reproduces the clean one exactly
(the error nodes of circuit tracing), a consistency check.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

import torch

from pyinterp.sae.crosscoders import Crosscoder, CrossLayerTranscoder
from pyinterp.sae.transcoders import Transcoder


def _hooks_in_order(model, before: str, after: str, what: str) -> None:
    names = model.hook_names() if hasattr(model, "hook_names") else None
    if names and before in names and after in names and names.index(before) > names.index(after):
        raise ValueError(f"{what}: the input hook {before!r} runs after the output hook "
                         f"{after!r} in this model; cannot splice it causally")


def _check_hooks(dictionary, what: str) -> None:
    missing = [h for h in dictionary.input_hooks() + dictionary.target_hooks() if h is None]
    if missing or not dictionary.needed_hooks():
        raise ValueError(f"{what} needs its hook names (hook_name / hook_name_out / hook_names / "
                         "hook_names_out) to be spliced into a model")


def replacement_hooks(dictionary, *, mode: str = "dictionary", model=None,
                      clean: Optional[dict] = None, errors: Optional[dict] = None) -> list:
    """``fwd_hooks`` replacing the activations ``dictionary`` reconstructs.

    mode: "dictionary" (its reconstruction) or "zero" (zero ablation of the same hooks).
    clean: the clean pass's activations {hook: tensor} (required for crosscoders).
    errors: {target hook: tensor} added to the replacement (from :func:`error_terms`).
    """
    if mode not in ("dictionary", "zero"):
        raise ValueError(f"mode must be 'dictionary' or 'zero', got {mode!r}")
    name = type(dictionary).__name__
    targets = dictionary.target_hooks() or dictionary.input_hooks()
    if mode == "zero":
        return [(h, lambda a, hook: torch.zeros_like(a)) for h in targets]
    errors = errors or {}

    def out(h, y, a):
        y = y.reshape(a.shape).to(a.dtype)
        return y + errors[h].to(a.dtype) if h in errors else y

    if isinstance(dictionary, CrossLayerTranscoder):
        _check_hooks(dictionary, name)
        ins, outs = dictionary.input_hooks(), dictionary.target_hooks()
        if model is not None:
            for j in range(dictionary.n_layers):
                _hooks_in_order(model, ins[j], outs[j], name)
        codes: dict = {}

        def encode_hook(layer):
            def fn(a, hook):
                codes[layer] = dictionary.encode_layer(layer, a)
            return fn

        def decode_hook(layer):
            def fn(a, hook):
                have = [l for l in range(layer + 1) if l in codes]
                if len(have) != layer + 1:
                    raise RuntimeError(f"{name}: layer {layer}'s output hook ran before the inputs "
                                       f"of layers {sorted(set(range(layer + 1)) - set(have))}")
                v = torch.cat([codes[l][0] for l in have], -1)
                i = torch.cat([codes[l][1] + l * dictionary.d_sae for l in have], -1)
                return out(hook.name, dictionary.decode(v, i, outputs=[layer])[0], a)
            return fn
        return ([(h, encode_hook(l)) for l, h in enumerate(ins)]
                + [(h, decode_hook(j)) for j, h in enumerate(outs)])
    if isinstance(dictionary, Crosscoder):
        _check_hooks(dictionary, name)
        if clean is None:
            raise ValueError("a crosscoder is acausal: pass the clean activations (clean=...)")
        recon = dictionary(torch.stack([clean[h] for h in dictionary.input_hooks()]).unbind(0))
        return [(h, (lambda r: lambda a, hook: out(hook.name, r, a))(recon[l]))
                for l, h in enumerate(dictionary.input_hooks())]
    if isinstance(dictionary, Transcoder):
        _check_hooks(dictionary, name)
        if model is not None:
            _hooks_in_order(model, dictionary.hook_name, dictionary.hook_name_out, name)
        state: dict = {}

        def save(a, hook):
            state["x"] = a

        def predict(a, hook):
            if "x" not in state:
                raise RuntimeError(f"{name}: the output hook ran before the input hook")
            return out(hook.name, dictionary(state.pop("x")), a)
        return [(dictionary.hook_name, save), (dictionary.hook_name_out, predict)]
    if dictionary.hook_name is None:
        raise ValueError(f"{name} has no hook_name to splice at")
    return [(dictionary.hook_name, lambda a, hook: out(hook.name, dictionary(a), a))]


@torch.no_grad()
def error_terms(dictionary, clean: dict) -> dict:
    """{target hook: clean activation - reconstruction from the clean inputs}."""
    inputs = [clean[h] for h in dictionary.input_hooks()]
    if isinstance(dictionary, CrossLayerTranscoder):
        pred = dictionary(inputs)
    elif isinstance(dictionary, Crosscoder):
        pred = dictionary(inputs)
    else:
        pred = dictionary(inputs[0]).unsqueeze(0)
    targets = dictionary.target_hooks() or dictionary.input_hooks()
    return {h: clean[h] - pred[g].to(clean[h].dtype) for g, h in enumerate(targets)}


def spliced_losses(dictionary, inputs: Union[torch.Tensor, Iterable], losses: Callable) -> dict:
    """``losses(batch) -> (clean, zero_ablation, spliced)`` averaged over ``inputs`` (one batch or
    an iterable of them) with ``dictionary`` in eval mode, and loss_recovered =
    (zero_ablation - spliced) / (zero_ablation - clean) (NaN when the two are equal)."""
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if not batches:
        raise ValueError("inputs is empty")
    tot = {"clean": 0.0, "zero_ablation": 0.0, "spliced": 0.0}
    was_training = dictionary.training
    dictionary.eval()
    try:
        for b in batches:
            for key, loss in zip(tot, losses(b)):
                tot[key] += float(loss)
    finally:
        dictionary.train(was_training)
    out = {k: v / len(batches) for k, v in tot.items()}
    gap = out["zero_ablation"] - out["clean"]
    out["loss_recovered"] = (out["zero_ablation"] - out["spliced"]) / gap if gap != 0 else float("nan")
    return out


@torch.no_grad()
def loss_recovered(model, inputs: Union[torch.Tensor, Iterable], dictionary, *,
                   errors: bool = False, loss_fn: Optional[Callable] = None) -> dict:
    """(L_zero - L_spliced) / (L_zero - L_clean) for any dictionary, averaged over batches.

    ``model`` needs ``run_with_hooks(batch, fwd_hooks=..., return_type="loss")`` and
    ``run_with_cache`` (pyinterp models, TransformerLens); ``loss_fn(batch, fwd_hooks)`` replaces
    the former. ``errors=True`` adds clean-pass error terms (the result is then 1 up to float
    error). Returns {"clean", "zero_ablation", "spliced", "loss_recovered"}.
    """
    if loss_fn is None:
        if not hasattr(model, "run_with_hooks"):
            raise TypeError("model must have run_with_hooks(..., return_type='loss'), or pass loss_fn")

        def loss_fn(batch, hooks):
            return model.run_with_hooks(batch, fwd_hooks=hooks, return_type="loss")
    need_clean = errors or isinstance(dictionary, Crosscoder)

    def losses(b):
        clean = None
        if need_clean:
            _, clean = model.run_with_cache(b, names_filter=dictionary.needed_hooks())
        err = error_terms(dictionary, clean) if errors else None
        return (loss_fn(b, []), loss_fn(b, replacement_hooks(dictionary, mode="zero")),
                loss_fn(b, replacement_hooks(dictionary, model=model, clean=clean, errors=err)))

    return spliced_losses(dictionary, inputs, losses)
