"""Optional integrations with peer libraries; each imports its library only when used and
raises an ImportError naming the extra to install when it is missing.

- :mod:`pyinterp.integrations.transformer_lens`: pyinterp head scores and SAE kernels on a
  TransformerLens ``HookedTransformer`` by hook name (``pip install 'pyinterp[peers]'``).
- :mod:`pyinterp.integrations.hf`: pyinterp ops on Hugging Face ``transformers`` modules through
  hooks (``pip install 'pyinterp[hf]'``).
- :mod:`pyinterp.integrations.sae_lens`: the SAELens on-disk layout and acceleration of SAELens
  SAE objects (``pip install 'pyinterp[peers]'``).
"""
import importlib

__all__ = ["hf", "sae_lens", "transformer_lens"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"pyinterp.integrations.{name}")
    raise AttributeError(f"module 'pyinterp.integrations' has no attribute {name!r}")
