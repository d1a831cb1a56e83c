"""Route a validated op call to the backend chosen by :mod:`pyinterp._backend`.

Convention: op family ``F`` (e.g. ``solu``) is implemented by one module per backend,
each defining functions named like the public ops and taking already-validated arguments:

- ``reference`` -> ``pyinterp.reference.F``
- ``cpu``       -> ``pyinterp.backends.cpu.F``
- ``triton``    -> ``pyinterp.triton_kernels.F``
- ``cuda``      -> ``pyinterp.backends.cuda.F``
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from pyinterp import _backend

_MODULE_PATTERN = {
    "reference": "pyinterp.reference.{family}",
    "cpu": "pyinterp.backends.cpu.{family}",
    "triton": "pyinterp.triton_kernels.{family}",
    "cuda": "pyinterp.backends.cuda.{family}",
}


def implementation(family: str, backend: str):
    """The module implementing ``family`` on ``backend``."""
    if backend == "triton":
        import pyinterp.backends.triton  # noqa: F401  (registers pyinterp.triton_kernels)
    return importlib.import_module(_MODULE_PATTERN[backend].format(family=family))


def pick(op: str, family: str, *tensors: Optional[torch.Tensor], backend: Optional[str] = None,
         supported: tuple[str, ...] = _backend.BACKENDS):
    """Return ``(backend_name, module)`` to run ``op`` on ``tensors``."""
    name = _backend.resolve(op, supported, *tensors, name=backend)
    return name, implementation(family, name)
