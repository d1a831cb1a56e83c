"""Backends: one package per backend, each a registration plus one launcher module per op
family (``pyinterp/backends/<name>/<family>.py``). See docs/adding-a-backend.md.

Importing this package (or a backend's ``__init__``) is cheap: triton, cupy and the C++
extension are imported only when a backend is checked or used.
"""
from pyinterp.backends.registry import (
    ANY_DEVICE,
    Backend,
    clear_caches,
    get,
    launchers,
    names,
    register_backend,
    status,
    supports,
)

__all__ = ["ANY_DEVICE", "Backend", "clear_caches", "get", "launchers", "names",
           "register_backend", "status", "supports"]
