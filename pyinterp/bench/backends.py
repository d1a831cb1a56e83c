"""Which backends a benchmark case times, from the backend registry (never a hard-coded list)."""
from __future__ import annotations

from pyinterp import _backend
from pyinterp._common import triton_interpreted
from pyinterp.backends import registry


def _op(name: str):
    import pyinterp.ops  # noqa: F401  (defines every op)
    from pyinterp.ops._dispatch import OPS

    return OPS[name]


def timed_backends(op: str, device_type: str) -> list[str]:
    """Kernel backends (not the oracle) that run public op ``op`` on ``device_type`` tensors
    here. Triton's interpreter is a correctness tool, never timed."""
    supported = _op(op)
    out = []
    for name in registry.names():
        b = registry.get(name)
        if b.oracle or not _backend.availability(name)[0] or not b.runs_on(device_type):
            continue
        if name == "triton" and device_type == "cpu" and triton_interpreted():
            continue
        if supported(name):
            out.append(name)
    return out


def auto_backend(op: str, device_type: str) -> str:
    """The backend ``auto`` picks for ``op`` on ``device_type`` tensors."""
    return _backend.resolve_name(op, _op(op), device_type, "auto")
