"""The backend registry: one :class:`Backend` object per backend.

A backend is a package ``pyinterp.backends.<name>`` whose ``__init__.py`` calls
:func:`register_backend` and whose ``<name>/<family>.py`` modules are launcher sets (plain
functions the family's autograd Functions call). Packages under ``pyinterp/backends/`` are
found and registered on first use; a backend living elsewhere registers itself the same way
when its package is imported. The ops an op family supports on a backend are discovered from
its launcher module (docs/adding-a-backend.md).

The oracle ``reference`` (``pyinterp.reference``) is registered here as a description only:
this module never imports it.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Mapping, Optional, Union

import torch

ANY_DEVICE = "*"


@dataclass(frozen=True)
class Backend:
    """What pyinterp knows about a backend.

    name: the name users pass to ``pyinterp.backend(...)`` / ``backend=``.
    module: the package holding one launcher module per op family (``<module>.<family>``).
    available: ``() -> (ok, reason)``, independent of any tensor; called once, then cached
        (:func:`clear_caches` forgets it). Must not raise, and must import heavy optional
        dependencies (triton, cupy) only inside the call.
    devices: the device types it runs (``"cpu"``, ``"cuda"``, or ``"*"`` for any), or a
        callable returning them (evaluated per resolution, e.g. triton runs CPU tensors only
        under ``TRITON_INTERPRET=1``).
    auto: device type -> priority for ``auto`` (higher first); absent types are never picked
        automatically (an explicit request still works).
    oracle: True for the reference: its family modules define the ops themselves
        (differentiated by torch autograd) instead of launchers.
    """

    name: str
    module: str
    available: Callable[[], tuple[bool, str]]
    devices: Union[tuple[str, ...], Callable[[], tuple[str, ...]]]
    auto: Mapping[str, int] = field(default_factory=dict)
    oracle: bool = False

    def device_types(self) -> tuple[str, ...]:
        return tuple(self.devices() if callable(self.devices) else self.devices)

    def runs_on(self, device_type: str) -> bool:
        types = self.device_types()
        return ANY_DEVICE in types or device_type in types

    def auto_priority(self, device_type: str) -> Optional[int]:
        return self.auto.get(device_type, self.auto.get(ANY_DEVICE))


_REGISTRY: dict[str, Backend] = {}
_status: dict[str, tuple[bool, str]] = {}
_launchers: dict[tuple[str, str], Optional[ModuleType]] = {}
_discovered = False


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` to the registry (``replace=True`` to redefine a name)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a pyinterp.backends.Backend, got {type(backend).__name__}")
    if backend.name == "auto" or not backend.name.isidentifier():
        raise ValueError(f"backend name must be an identifier other than 'auto', got {backend.name!r}")
    if backend.name in _REGISTRY and not replace and _REGISTRY[backend.name] != backend:
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    clear_caches()
    return backend


def _discover() -> None:
    """Register the oracle and import every backend package under pyinterp/backends/."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    register_backend(Backend(
        name="reference", module="pyinterp.reference",
        available=lambda: (True, f"torch {torch.__version__} (pure torch, the oracle)"),
        devices=(ANY_DEVICE,), auto={ANY_DEVICE: 0}, oracle=True))
    import pyinterp.backends as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.ispkg and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def names() -> tuple[str, ...]:
    """Registered backend names, in registration order (the oracle first)."""
    _discover()
    return tuple(_REGISTRY)


def get(name: str) -> Backend:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend must be one of {names() + ('auto',)}, got {name!r}") from None


def status(name: str) -> tuple[bool, str]:
    """``(ok, reason)``: whether backend ``name`` can run at all here (cached)."""
    if name not in _status:
        try:
            _status[name] = tuple(get(name).available())
        except Exception as exc:  # a broken probe must not break pyinterp.info()
            _status[name] = (False, f"availability check failed: {exc!r}")
    return _status[name]


def launchers(name: str, family: str) -> Optional[ModuleType]:
    """Backend ``name``'s launcher set for op family ``family``: the module
    ``<backend.module>.<family>``, or None when the backend has none."""
    key = (name, family)
    if key not in _launchers:
        target = f"{get(name).module}.{family}"
        try:
            _launchers[key] = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name != target:  # a missing dependency inside the module: say so
                raise
            _launchers[key] = None
    return _launchers[key]


def supports(name: str, family: str, required: tuple[str, ...]) -> bool:
    """Whether backend ``name``'s launcher module for ``family`` defines every name in
    ``required`` (the launchers an op's Function calls, or the op itself for the oracle)."""
    module = launchers(name, family)
    return module is not None and all(callable(getattr(module, r, None)) for r in required)


def clear_caches() -> None:
    """Forget cached availability and launcher lookups (tests toggle environment variables)."""
    _status.clear()
    _launchers.clear()
    for hook in _on_clear:
        hook()


# Callbacks run by clear_caches (pyinterp._backend drops its resolution cache).
_on_clear: list[Callable[[], None]] = []
