"""The dictionary architecture registry: architecture name -> module class.

:mod:`pyinterp.sae.io` (files in SAELens's layout), :func:`pyinterp.sae.build` and
:class:`pyinterp.sae.SAEConfig` find classes here, so none of them imports the classes
(SAELens's ``register_sae_class`` does the same). Imports nothing from pyinterp.

Adding an architecture (e.g. a transcoder):

1. Subclass :class:`pyinterp.sae.SparseAutoencoder` (``pyinterp/sae/modules.py``, or a module
   of your own) with a class attribute ``architecture = "name"``; define ``_encode`` (and
   ``_encode_train`` / ``_sparsity`` / ``_aux`` for training).
2. Register it: decorate the class with ``@register_sae_class`` (or call
   ``register_sae_class(MyClass)``). The module defining it must be imported by
   ``pyinterp/sae/__init__.py`` so the class is registered before any file is loaded.
3. Files: the base class writes and reads W_enc, W_dec, b_enc, b_dec and the config. A class
   whose files hold more overrides the hooks (see ``JumpReLUSAE`` / ``BatchTopKSAE``):

   - ``saelens_tensors(cfg)`` (classmethod): names of the extra tensors a file must hold
   - ``saelens_save(self, tensors, cfg_json, metadata)``: add tensors / cfg.json fields,
     possibly changing ``cfg_json["architecture"]`` (BatchTopK saves as a JumpReLU)
   - ``saelens_load(self, tensors)``: restore them into the freshly built module
"""
from __future__ import annotations

from typing import Optional

_CLASSES: dict[str, type] = {}


def register_sae_class(cls: type, architecture: Optional[str] = None, *,
                       replace: bool = False) -> type:
    """Register dictionary class ``cls`` under ``architecture`` (default: ``cls.architecture``).
    Returns ``cls``, so it works as a class decorator. Re-registering a name raises unless
    ``replace=True``."""
    name = architecture or getattr(cls, "architecture", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty string architecture to register")
    if name in _CLASSES and _CLASSES[name] is not cls and not replace:
        raise ValueError(f"SAE architecture {name!r} is already registered to "
                         f"{_CLASSES[name].__name__}")
    _CLASSES[name] = cls
    return cls


def architectures() -> tuple[str, ...]:
    """Registered architecture names, in registration order."""
    return tuple(_CLASSES)


def get_sae_class(architecture: str) -> type:
    try:
        return _CLASSES[architecture]
    except KeyError:
        raise ValueError(f"architecture must be one of {architectures()}, got {architecture!r}"
                         ) from None


def architecture_of(sae) -> str:
    """The registered architecture of dictionary ``sae``; TypeError for anything else."""
    name = getattr(sae, "architecture", None)
    cls = _CLASSES.get(name) if isinstance(name, str) else None
    if cls is None or not isinstance(sae, cls):
        raise TypeError(f"sae must be a registered pyinterp.sae dictionary ({architectures()}), "
                        f"got {type(sae).__name__}")
    return name
