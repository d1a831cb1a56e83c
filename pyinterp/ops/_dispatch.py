"""Route a validated op call to a backend: its launcher set, or the oracle's op.

Each op declares once what it needs from a backend (:class:`Op`): the launchers its Function
calls from the family's launcher module ``<backend package>.<family>``. A backend supports the
op when that module defines them all; the oracle (``reference``) supports it when
``pyinterp.reference.<family>`` defines the op itself. This is the only production module that
touches ``pyinterp.reference``.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch

from pyinterp import _backend
from pyinterp.backends import registry

# Every public op by name (filled as the op modules define them).
OPS: dict[str, "Op"] = {}


class Op:
    """One public op of family ``family`` whose Function calls ``launchers``."""

    def __init__(self, name: str, family: str, launchers: tuple[str, ...]):
        self.name, self.family, self.launchers = name, family, tuple(launchers)
        OPS[name] = self

    def __call__(self, backend: str) -> bool:  # the ``supported`` predicate of _backend.resolve
        b = registry.get(backend)
        return registry.supports(backend, self.family, (self.name,) if b.oracle else self.launchers)

    def __repr__(self) -> str:
        return f"Op({self.name!r}, family={self.family!r})"


def pick(op: Op, *tensors: Optional[torch.Tensor], backend: Optional[str] = None
         ) -> tuple[str, ModuleType]:
    """``(name, module)``: the backend that runs ``op`` on ``tensors`` and its module for the
    family (launchers, or the oracle's ops when ``registry.get(name).oracle``)."""
    name = _backend.resolve(op.name, op, *tensors, name=backend)
    return name, registry.launchers(name, op.family)


def is_oracle(name: str) -> bool:
    return registry.get(name).oracle


def implementation(family: str, backend: str) -> ModuleType:
    """The module implementing ``family`` on ``backend`` (launchers, or the oracle's ops)."""
    module = registry.launchers(backend, family)
    if module is None:
        raise _backend.BackendUnavailableError(f"backend {backend!r} has no {family} module")
    return module
