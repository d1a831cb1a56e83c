"""pyinterp: a custom-kernel performance engine for mechanistic interpretability.

    import pyinterp
    pyinterp.info()                     # what runs here
    with pyinterp.backend("cpu"):
        y = pyinterp.ops.solu_ln(x, w, b)
"""
from pyinterp._backend import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    backend,
    get_backend,
    set_backend,
)
from pyinterp._info import info
from pyinterp import ops

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "backend",
    "get_backend",
    "info",
    "ops",
    "set_backend",
]
