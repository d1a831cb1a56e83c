"""Per-call overhead of the op layers on tiny CPU inputs, where dispatch dominates: the launcher
alone, the family's autograd Function (what eager ops run), the torch.library custom op (what a
compiled graph runs, called eagerly here) and the public op (argument checks, backend choice,
Function). docs/decisions/torch-library-ops.md quotes these figures.
"""
from __future__ import annotations

import torch

from pyinterp.bench.backends import auto_backend
from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row

CALLS = 1000  # calls per timed sample


def _loop(fn):
    def run():
        for _ in range(CALLS):
            fn()
    return run


def _solu_calls(backend, grad):
    from pyinterp import ops
    from pyinterp._common import rows_view
    from pyinterp.backends import registry
    from pyinterp.ops.solu.function import SoLU

    L = registry.launchers(backend, "solu")
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)).requires_grad_(grad)
    if grad:
        fns = {"function": lambda: SoLU.apply(x, L)[0].sum().backward(),
               "custom_op": lambda: torch.ops.pyinterp.solu(x, backend)[0].sum().backward(),
               "public_op": lambda: ops.solu(x, backend=backend).sum().backward()}
    else:
        fns = {"launcher": lambda: L.solu_forward(rows_view(x)),
               "function": lambda: SoLU.apply(x, L),
               "custom_op": lambda: torch.ops.pyinterp.solu(x, backend),
               "public_op": lambda: ops.solu(x, backend=backend)}
    return {k: _loop(f) for k, f in fns.items()}


def _topk_calls(backend):
    from pyinterp import ops
    from pyinterp.backends import registry
    from pyinterp.ops.sae.function import SparseEncode

    L = registry.launchers(backend, "sae")
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(4, 64, generator=g), torch.randn(64, 256, generator=g)
    be, bd = torch.randn(256, generator=g), torch.randn(64, generator=g)
    fns = {"launcher": lambda: L.topk(x, W, be, bd, 8),
           "function": lambda: SparseEncode.apply(x, W, be, bd, "topk", 8, None, L),
           "custom_op": lambda: torch.ops.pyinterp.topk_encode(x, W, be, bd, 8, backend),
           "public_op": lambda: ops.topk_encode(x, W, be, bd, 8, backend=backend)}
    return {k: _loop(f) for k, f in fns.items()}


def groups(device=None, quick=False) -> list[Group]:
    backend = auto_backend("solu", "cpu")
    if backend == "reference":  # the oracle has no launchers: nothing to measure
        return []
    repeat = 5 if quick else 11
    info = {"backend": backend, "calls": CALLS, "shape": "(4, 64); top-8 of 256"}
    forward = ("launcher", "function", "custom_op", "public_op")
    return [Group("SoLUDispatch", forward, lambda: _solu_calls(backend, False), repeat=repeat,
                  info=info),
            Group("SoLUDispatchBackward", forward[1:], lambda: _solu_calls(backend, True),
                  grad=True, repeat=repeat, info=info),
            Group("TopKEncodeDispatch", forward, lambda: _topk_calls(backend), repeat=repeat,
                  info=info)]


LABELS = {"launcher": "launcher alone", "function": "autograd Function (eager path)",
          "custom_op": "torch.ops.pyinterp custom op", "public_op": "public op (checks + dispatch)"}


def run(args) -> list[Row]:
    rows = []
    for group in groups(None, getattr(args, "quick", False)):
        _, t = group.time()
        op = {"SoLUDispatch": "solu fwd", "SoLUDispatchBackward": "solu fwd+bwd",
              "TopKEncodeDispatch": "topk_encode fwd"}[group.name]
        base = t["function"]
        for impl in group.impls:
            rows.append(Row(f"{op} per call", group.info["shape"], "float32",
                            f"{LABELS[impl]} [{group.info['backend']}]", t[impl] / CALLS,
                            baseline="Function" if impl != "function" else None,
                            baseline_seconds=base / CALLS if impl != "function" else None,
                            extra={"us_per_call": 1e6 * t[impl] / CALLS}))
    return rows
