"""torch.library registration: every public op as ``torch.ops.pyinterp.<op>``.

Each family's ``function.py`` registers its ops with :func:`custom_op` (a
``torch.library.custom_op`` plus its fake, i.e. meta, implementation) and their autograd with
:func:`register_autograd`, built from the family's autograd.Function: its ``compute`` (the
forward without ctx) is the op's implementation, its ``setup`` and ``backward`` the op's
autograd. Inside a custom op's autograd the backward must not launch kernels directly
(torch.compile traces it), so its launcher set is :class:`CompiledLaunchers`: each backward
launcher is itself a custom op, with the backend name as its last argument.

Eager calls do not go through the dispatcher (``Op.apply`` calls the Function directly: a
custom op costs tens of microseconds per call); under ``torch.compile`` they do.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from pyinterp.backends import registry

NAMESPACE = "pyinterp"


def custom_op(name: str, fake: Callable):
    """Decorator: ``fn`` becomes the custom op ``pyinterp::<name>`` (no input is mutated) with
    fake implementation ``fake`` (output shapes and dtypes from the inputs' metadata)."""
    def wrap(fn):
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=())(fn)
        op.register_fake(fake)
        return op
    return wrap


def launchers(backend: str, family: str):
    """The backend's launcher set for ``family``, looked up by the ops' implementations."""
    return registry.launchers(backend, family)


class CompiledLaunchers:
    """The launcher set a Function's backward sees under a custom op: attribute ``name`` calls
    the custom op ``ops[name]`` with ``backend`` appended."""

    def __init__(self, backend: str, ops: dict):
        self._backend, self._ops = backend, ops

    def __getattr__(self, name):
        op = self._ops.get(name)
        if op is None:
            raise AttributeError(name)
        return functools.partial(op, backend=self._backend)


def register_autograd(op, function, backward_ops: dict, to_inputs: Callable,
                      to_grads: Callable) -> None:
    """Give custom op ``op`` the autograd of ``function`` (an autograd.Function with static
    ``setup(ctx, inputs, output)`` and ``backward``, launcher set last).
    ``to_inputs(op_inputs, launchers)`` maps the op's inputs (backend name last) to the
    Function's; ``to_grads(grads)`` maps the Function's input gradients back to one per op
    input. The backward's launchers are the custom ops ``backward_ops``."""
    def setup_context(ctx, inputs, output):
        launcher_set = CompiledLaunchers(inputs[-1], backward_ops)
        function.setup(ctx, to_inputs(inputs[:-1], launcher_set), output)

    def backward(ctx, *grads):
        return (*to_grads(function.backward(ctx, *grads)), None)

    op.register_autograd(backward, setup_context=setup_context)


def same_inputs(inputs, launcher_set):
    """``to_inputs`` of an op whose arguments are the Function's (launchers last)."""
    return (*inputs, launcher_set)


def same_grads(grads):
    """``to_grads`` of an op whose arguments are the Function's: drop the launchers' slot."""
    return grads[:-1]
