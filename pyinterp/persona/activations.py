"""Layer-wise reductions of a model's residual stream over selected tokens, on the device.

Each function runs teacher-forced batches with one hook per requested layer; the hook reduces
its (B, T, D) activation at once with the fused ops (:func:`pyinterp.ops.persona_pool` /
:func:`pyinterp.ops.persona_project`, which read it in place) and drops it, so memory stays that
of a plain forward and the model is never asked for all its hidden states. The forward stops
after the last requested layer. Results stay on the device.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from pyinterp import ops
from pyinterp.persona._model import DEFAULT_HOOK, check_layers, check_vector, hook_name
from pyinterp.persona.data import Sample, teacher_forced_batches


def _run(model, samples: Sequence[Sample], layers: List[int], batch_size: int, prompt_only: bool,
         reduce_fn: Callable, hook: str, progress: bool = False) -> List[torch.Tensor]:
    """For each batch: reduce_fn(k, x (B, T, D), select (B, T)) per layer k -> list over batches
    of (L, B, ...) tensors."""
    outs: List[torch.Tensor] = []
    batches = teacher_forced_batches(model, samples, batch_size, prompt_only=prompt_only)
    if progress:
        from pyinterp._progress import progress as progress_bar

        batches = progress_bar(batches, total=-(-len(samples) // batch_size), desc="activations", unit="batch")
    for _, tokens, attn, sel in batches:
        got: List[Optional[torch.Tensor]] = [None] * len(layers)

        def make(k):
            def fn(x, hook_point):
                got[k] = reduce_fn(k, x.detach(), sel)
            return fn

        hooks = [(hook_name(l, hook), make(k)) for k, l in enumerate(layers)]
        with torch.no_grad(), model.hooks(hooks):
            model(tokens, attention_mask=attn, stop_at_layer=max(layers) + 1)
        outs.append(torch.stack(got))
    return outs


def mean_activations(model, samples: Sequence[Sample], layers: Optional[Sequence[int]] = None, *,
                     batch_size: int = 16, prompt_only: bool = False, hook: str = DEFAULT_HOOK,
                     progress: bool = False) -> torch.Tensor:
    """(L, D) float32: the mean over samples of each sample's mean response-token activation
    (prompt tokens with ``prompt_only``) at ``blocks.{l}.<hook>``. Samples with no selected token
    are rejected."""
    layers = check_layers(model, layers)
    if not samples:
        raise ValueError("samples is empty: nothing to average")
    empty = [i for i, s in enumerate(samples) if not (s.prompt_ids if prompt_only else s.response_ids)]
    if empty:
        raise ValueError(f"{len(empty)} sample(s) have no {'prompt' if prompt_only else 'response'} "
                         f"tokens (first: index {empty[0]}); drop them first")

    def reduce_fn(k, x, sel):
        return ops.persona_pool([x], sel, "mean")[0].float().sum(0)  # (D,) summed over rows

    parts = _run(model, samples, layers, batch_size, prompt_only, reduce_fn, hook, progress)
    return torch.stack(parts).sum(0) / len(samples)


def projections(model, samples: Sequence[Sample], vectors: torch.Tensor,
                layers: Optional[Sequence[int]] = None, *, reduce: str = "mean",
                prompt_only: bool = False, batch_size: int = 16, normalize: bool = True,
                hook: str = DEFAULT_HOOK, progress: bool = False) -> torch.Tensor:
    """(L, N, P) float32 projections of each sample's selected tokens onto ``vectors``
    ((P, D) shared, (L, P, D) per layer, or (D,)), reduced by ``reduce`` ("mean" over response
    tokens, "last" token ...). ``prompt_only`` + "last" = the last prompt token (monitoring)."""
    layers = check_layers(model, layers)
    vectors = check_vector(model, vectors, "vectors")
    if vectors.dim() == 1:
        vectors = vectors[None]
    if vectors.dim() == 3 and vectors.shape[0] != len(layers):
        raise ValueError(f"vectors must have one set per layer ({len(layers)}), got {tuple(vectors.shape)}")
    if not samples:
        raise ValueError("samples is empty: nothing to project")

    def reduce_fn(k, x, sel):
        v = (vectors if vectors.dim() == 2 else vectors[k]).to(x.device)
        return ops.persona_project([x], v, sel, reduce, normalize)[0].float()  # (B, P)

    parts = _run(model, samples, layers, batch_size, prompt_only, reduce_fn, hook, progress)
    return torch.cat(parts, dim=1)
