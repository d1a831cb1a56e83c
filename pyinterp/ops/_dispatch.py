"""Route a validated op call to a backend: its launcher set, or the oracle's op.

Each op declares once what it needs from a backend (:class:`Op`): the launchers its Function
calls from the family's launcher module ``<backend package>.<family>``. A backend supports the
op when that module defines them all; the oracle (``reference``) supports it when
``pyinterp.reference.<family>`` defines the op itself (the registry loads that module by name
when the oracle is picked: no production module imports it).
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable, Optional

import torch

from pyinterp import _backend
from pyinterp.backends import registry

# Every public op by name (filled as the op modules define them).
OPS: dict[str, "Op"] = {}


class Op:
    """One public op of family ``family`` whose Function calls ``launchers``.

    ``function``: the family's autograd.Function (launcher set as its last argument);
    ``custom``: the op registered with torch.library (backend name as its last argument);
    ``to_custom(args)``: the custom op's arguments from the Function's (default: the same)."""

    def __init__(self, name: str, family: str, launchers: tuple[str, ...], function=None,
                 custom=None, to_custom: Optional[Callable] = None):
        self.name, self.family, self.launchers = name, family, tuple(launchers)
        self.function, self.custom, self.to_custom = function, custom, to_custom
        OPS[name] = self

    def __call__(self, backend: str) -> bool:  # the ``supported`` predicate of _backend.resolve
        b = registry.get(backend)
        return registry.supports(backend, self.family, (self.name,) if b.oracle else self.launchers)

    def apply(self, backend: str, launcher_set, *args, custom_extra: tuple = ()):
        """Run the op's Function on a kernel backend: ``Function.apply(*args, launcher_set)``
        eagerly; under torch.compile the custom op ``torch.ops.pyinterp.<op>`` instead (with
        ``custom_extra`` after the mapped arguments: what the op does inside in that case)."""
        if torch.compiler.is_compiling():
            custom_args = self.to_custom(*args) if self.to_custom is not None else args
            return self.custom(*custom_args, *custom_extra, backend)
        return self.function.apply(*args, launcher_set)

    def __repr__(self) -> str:
        return f"Op({self.name!r}, family={self.family!r})"


def pick(op: Op, *tensors: Optional[torch.Tensor], backend: Optional[str] = None
         ) -> tuple[str, Optional[ModuleType]]:
    """``(name, module)``: the backend that runs ``op`` on ``tensors`` and its module for the
    family (launchers, or the oracle's ops when ``registry.get(name).oracle``). Under
    torch.compile the choice is made once, when the function is traced, and the module is
    given for the oracle only (kernel backends then run through the custom ops)."""
    if torch.compiler.is_compiling():
        name = _traced_choice(op.name, _backend.device_type_of(*tensors), backend)
        return name, registry.launchers(name, op.family) if is_oracle(name) else None
    name = _backend.resolve(op.name, op, *tensors, name=backend)
    return name, registry.launchers(name, op.family)


def _traced_choice(op_name: str, device_type: str, backend: Optional[str]) -> str:
    """The backend for ``op_name`` on ``device_type`` tensors, resolved at trace time (a
    constant of the compiled graph: recompile to follow a later change of backend)."""
    op = OPS[op_name]
    requested = _backend._check_name(backend) if backend is not None else _backend.get_backend()
    name = _backend.resolve_name(op_name, op, device_type, requested)
    registry.launchers(name, op.family)  # imported now, so the traced code finds it cached
    return name


# What torch.compiler.assume_constant_result does (dynamo runs the function at trace time and
# keeps its result as a constant), without importing torch._dynamo when pyinterp is imported.
_traced_choice._dynamo_marked_constant = True


def is_oracle(name: str) -> bool:
    return registry.get(name).oracle


def implementation(family: str, backend: str) -> ModuleType:
    """The module implementing ``family`` on ``backend`` (launchers, or the oracle's ops)."""
    module = registry.launchers(backend, family)
    if module is None:
        raise _backend.BackendUnavailableError(f"backend {backend!r} has no {family} module")
    return module
