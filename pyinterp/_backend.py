"""Which backend runs an op: the user's choice, and ``auto``.

The backends themselves are registered in :mod:`pyinterp.backends.registry` (built in:
``reference``, the pure-torch oracle; ``cpu``, the C++ extension ``pyinterp._C``; ``triton``,
on CPU tensors only under ``TRITON_INTERPRET=1``; ``cuda``, ``csrc/cuda`` compiled at run time
by CuPy/NVRTC). Nothing here names a particular backend.

The backend in force is, by priority: the innermost ``with pyinterp.backend(name)``, then
``pyinterp.set_backend(name)``, then the ``PYINTERP_BACKEND`` variable, then ``auto``.
An explicitly named backend that cannot run the given tensors raises
:class:`BackendUnavailableError`; only ``auto`` chooses among backends, by each backend's
priority for the tensors' device type.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Callable, Collection, Iterator, Optional, Union

import torch

from pyinterp.backends import registry

# The backends registered at import (the built-in ones); pyinterp.backends.names() is live.
BACKENDS = registry.names()

_context_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "pyinterp_backend", default=None
)
_global_backend: Optional[str] = None


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run the given op on the given tensors."""


def choices() -> tuple[str, ...]:
    return registry.names() + ("auto",)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in choices():
        raise ValueError(f"backend must be one of {choices()}, got {name!r}")
    return name.lower()


def set_backend(name: Optional[str]) -> None:
    """Set the process-wide backend (``None`` clears it back to the environment/auto)."""
    global _global_backend
    _global_backend = None if name is None else _check_name(name)


def get_backend() -> str:
    """The backend name in force here (possibly ``auto``)."""
    name = _context_backend.get()
    if name is not None:
        return name
    if _global_backend is not None:
        return _global_backend
    env = os.environ.get("PYINTERP_BACKEND")
    if env:
        try:
            return _check_name(env)
        except ValueError:
            raise ValueError(
                f"PYINTERP_BACKEND must be one of {choices()}, got {env!r}"
            ) from None
    return "auto"


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """``with pyinterp.backend("cpu"): ...`` runs the ops inside on that backend."""
    token = _context_backend.set(_check_name(name))
    try:
        yield name
    finally:
        _context_backend.reset(token)


def availability(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` can run at all here, and why not."""
    name = _check_name(name)
    if name == "auto":
        return True, "picks per call"
    return registry.status(name)


def clear_caches() -> None:
    """Forget cached availability and resolutions (tests toggle environment variables)."""
    registry.clear_caches()


def device_ok(name: str, device_type: str) -> tuple[bool, str]:
    """Whether backend ``name`` runs tensors of ``device_type`` here, and why not."""
    b = registry.get(name)
    if b.runs_on(device_type):
        return True, ""
    return False, f"the {name} backend runs {'/'.join(b.device_types())} tensors only"



def device_type_of(*tensors: Optional[torch.Tensor]) -> str:
    types = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if len(types) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(types)}")
    return types.pop() if types else "cpu"


Supported = Union[Collection[str], Callable[[str], bool]]
_resolved: dict = {}
registry._on_clear.append(_resolved.clear)


def _supported(supported: Supported, name: str) -> bool:
    return supported(name) if callable(supported) else name in supported


def resolve_name(op: str, supported: Supported, device_type: str, requested: str) -> str:
    """The backend that runs ``op`` on ``device_type`` tensors when ``requested`` (a backend
    name or ``auto``) is asked for. ``supported(name)`` (or a collection of names) says which
    backends implement ``op``. An explicit backend that cannot run raises
    :class:`BackendUnavailableError` naming the reason; ``auto`` takes, among the backends
    that can run, the highest ``auto`` priority for the device type, else the oracle."""
    key = (op, device_type, requested, supported if callable(supported) else tuple(supported))
    hit = _resolved.get(key)
    if hit is not None:
        return hit
    if requested != "auto":
        if not _supported(supported, requested):
            have = tuple(n for n in registry.names() if _supported(supported, n))
            raise BackendUnavailableError(
                f"{op}: backend {requested!r} does not implement this op (it has {have})")
        ok, why = availability(requested)
        if not ok:
            raise BackendUnavailableError(f"{op}: backend {requested!r} is unavailable: {why}")
        ok, why = device_ok(requested, device_type)
        if not ok:
            raise BackendUnavailableError(
                f"{op}: backend {requested!r} cannot run {device_type} tensors: {why}")
        choice = requested
    else:
        ranked = sorted(
            (b for b in map(registry.get, registry.names())
             if b.auto_priority(device_type) is not None),
            key=lambda b: -b.auto_priority(device_type))
        choice = next((b.name for b in ranked
                       if availability(b.name)[0] and b.runs_on(device_type)
                       and _supported(supported, b.name)), "reference")
    _resolved[key] = choice
    return choice


def resolve(op: str, supported: Supported, *tensors: Optional[torch.Tensor],
            name: Optional[str] = None) -> str:
    """Pick the backend that runs ``op`` on ``tensors`` (see :func:`resolve_name`)."""
    requested = _check_name(name) if name is not None else get_backend()
    return resolve_name(op, supported, device_type_of(*tensors), requested)


def available_backends(device_type: str = "cpu") -> list[str]:
    """Backends that can run tensors of ``device_type`` here."""
    return [b for b in registry.names() if availability(b)[0] and device_ok(b, device_type)[0]]
