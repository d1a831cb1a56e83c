"""SAELens interoperability (implemented in :mod:`pyinterp.sae`, re-exported here).

- :func:`load` / :func:`save`: the SAELens directory layout (``cfg.json`` +
  ``sae_weights.safetensors``), readable and writable without sae-lens installed.
- :func:`accelerate` / :func:`restore`: make an SAELens ``SAE`` object (inference or
  training) run pyinterp's sparse kernels (needs ``sae-lens``: ``pip install 'pyinterp[peers]'``).
- :func:`as_sae_lens`: a pyinterp dictionary as an SAELens ``SAE`` (sharing its parameters), for
  ``HookedSAETransformer.add_sae`` / ``run_with_saes`` / ``run_with_cache_with_saes``.
"""
from __future__ import annotations

import functools


def _require():
    try:
        import sae_lens
    except ImportError as e:
        raise ImportError("this needs sae-lens: pip install 'pyinterp[peers]'") from e
    return sae_lens


def load(path, **kwargs):
    """A pyinterp SAE from an SAELens-layout directory (:func:`pyinterp.sae.load`)."""
    from pyinterp import sae

    return sae.load(path, **kwargs)


def save(sae_module, path, **kwargs):
    """Write a pyinterp SAE in the SAELens layout (:func:`pyinterp.sae.save`)."""
    from pyinterp import sae

    return sae.save(sae_module, path, **kwargs)


def accelerate(sae_lens_sae):
    """Patch an SAELens SAE object to use pyinterp's kernels (:func:`pyinterp.sae.accelerate`)."""
    _require()
    from pyinterp import sae

    return sae.accelerate(sae_lens_sae)


def restore(sae_lens_sae):
    """Undo :func:`accelerate`."""
    from pyinterp import sae

    return sae.restore(sae_lens_sae)


def load_sae_lens(path, device: str = "cpu"):
    """An SAELens ``SAE`` object from a local directory (sae-lens's own loader, offline)."""
    sl = _require()
    return sl.SAE.load_from_disk(str(path), device=device)


def as_sae_lens(sae):
    """A pyinterp dictionary as an SAELens ``SAE`` object, for SAELens's tooling::

        model = sae_lens.HookedSAETransformer(cfg)        # or .from_pretrained(...)
        model.add_sae(as_sae_lens(pyinterp_sae))          # hook: pyinterp_sae.hook_name
        logits, cache = model.run_with_cache_with_saes(tokens, saes=[as_sae_lens(pyinterp_sae)])

    The adapter shares the dictionary's parameters (training one trains the other) and runs
    pyinterp's maths and kernels: ``encode`` returns SAELens's dense code (..., d_sae),
    ``decode`` gathers its non-zero rows of W_dec, ``forward`` never builds the dense code
    unless a hook reads it. All SAELens hook points are there (``hook_sae_acts_pre`` is
    computed densely only while a hook is attached to it). Note that W_enc/W_dec/b_dec are in
    the dictionary's normalised units when its ``input_scale`` is not 1.
    """
    from pyinterp.sae.modules import SparseAutoencoder

    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"as_sae_lens takes a pyinterp.sae dictionary, got {type(sae).__name__}")
    return _adapter_class()(sae)


@functools.lru_cache(maxsize=None)
def _adapter_class():
    _require()
    from pyinterp.integrations._sae_lens_adapter import build_adapter_class

    return build_adapter_class()
