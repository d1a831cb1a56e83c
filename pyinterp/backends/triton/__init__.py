"""The Triton backend: launchers (one module per family) over the @triton.jit kernels of
``triton_kernels/`` (loaded as ``pyinterp.triton_kernels`` by :mod:`.kernels`).

Runs CUDA tensors; CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1`` set
before triton is first imported), which ``auto`` never picks: it is a correctness tool.
"""
from __future__ import annotations

import importlib.util

import torch

from pyinterp._common import triton_interpreted
from pyinterp.backends.registry import Backend, register_backend


def _devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if triton_interpreted() else ("cuda",)


def _available() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install 'pyinterp[gpu]')"
    try:
        import triton

        from pyinterp.backends.triton import kernels  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the install
        return False, f"triton failed to import: {exc}"
    if triton_interpreted():
        return True, f"triton {triton.__version__} (interpreter: runs on CPU tensors)"
    if torch.cuda.is_available():
        return True, f"triton {triton.__version__}"
    return False, (
        f"triton {triton.__version__} is installed but there is no CUDA device "
        "(set TRITON_INTERPRET=1 before importing triton to run it on CPU tensors)"
    )


register_backend(Backend(name="triton", module=__name__, available=_available, devices=_devices,
                         auto={"cuda": 20}))
