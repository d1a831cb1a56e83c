"""SAELens interoperability (implemented in :mod:`pyinterp.sae`, re-exported here).

- :func:`load` / :func:`save`: the SAELens directory layout (``cfg.json`` +
  ``sae_weights.safetensors``), readable and writable without sae-lens installed.
- :func:`accelerate` / :func:`restore`: make an SAELens ``SAE`` object run pyinterp's sparse
  kernels (needs ``sae-lens``: ``pip install 'pyinterp[peers]'``).
"""
from __future__ import annotations


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
