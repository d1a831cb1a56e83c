"""pyinterp: a custom-kernel performance engine for mechanistic interpretability.

    import pyinterp
    pyinterp.info()                     # what runs here
    with pyinterp.backend("cpu"):
        y = pyinterp.ops.solu_ln(x, w, b)
"""
from pyinterp import ops
from pyinterp._backend import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    backend,
    get_backend,
    set_backend,
)
from pyinterp._files import CorruptFileError
from pyinterp._info import info

__version__ = "0.1.0"

# Subpackages imported on first attribute access (``pyinterp.sae.load(...)`` works after a
# bare ``import pyinterp``) without paying for them at import time.
_LAZY = ("attention", "bench", "circuits", "data", "distributed", "experiments", "integrations", "models",
         "nn", "persona", "sae")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"pyinterp.{name}")
    raise AttributeError(f"module 'pyinterp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "CorruptFileError",
    "available_backends",
    "backend",
    "get_backend",
    "info",
    "ops",
    "set_backend",
]
