"""Backend registry and selection.

Four backends run every op: ``reference`` (pure torch, the oracle), ``cpu`` (the C++
extension ``pyinterp._C``), ``triton`` (``pyinterp.triton_kernels``; on CPU tensors only
under ``TRITON_INTERPRET=1``) and ``cuda`` (``csrc/cuda`` compiled at run time by CuPy/NVRTC).

The backend in force is, by priority: the innermost ``with pyinterp.backend(name)``, then
``pyinterp.set_backend(name)``, then the ``PYINTERP_BACKEND`` variable, then ``auto``.
An explicitly named backend that cannot run the given tensors raises
:class:`BackendUnavailableError`; only ``auto`` chooses among backends.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
from typing import Iterator, Optional

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
CHOICES = BACKENDS + ("auto",)

# Order in which `auto` tries backends, by tensor device. The Triton interpreter is a
# correctness tool (about 1000x slower than torch), so `auto` never picks it on CPU.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}

_context_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "pyinterp_backend", default=None
)
_global_backend: Optional[str] = None


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run the given op on the given tensors."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {name!r}")
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
                f"PYINTERP_BACKEND must be one of {CHOICES}, got {env!r}"
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


# ----------------------------------------------------------------------------------------
# availability: (ok, reason) per backend, independent of any tensor


@functools.lru_cache(maxsize=None)
def _cpu_status() -> tuple[bool, str]:
    try:
        importlib.import_module("pyinterp._C")
    except ImportError as exc:  # not built: a source checkout without tools/build_ext.sh
        return False, f"C++ extension pyinterp._C is not built ({exc})"
    return True, "pyinterp._C loaded"


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install 'pyinterp[gpu]')"
    try:
        import triton  # noqa: F401

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


@functools.lru_cache(maxsize=None)
def _cuda_status() -> tuple[bool, str]:
    if importlib.util.find_spec("cupy") is None:
        return False, "cupy is not installed (pip install 'pyinterp[gpu]')"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    try:
        from pyinterp.backends.cuda import runtime

        runtime.check_nvrtc()
    except Exception as exc:
        return False, f"NVRTC unavailable: {exc}"
    return True, "cupy + NVRTC"


def availability(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` can run at all here, and why not."""
    name = _check_name(name)
    if name == "reference":
        return True, f"torch {torch.__version__}"
    if name == "cpu":
        return _cpu_status()
    if name == "triton":
        return _triton_status()
    if name == "cuda":
        return _cuda_status()
    return True, "picks per call"


def clear_caches() -> None:
    """Forget cached availability (tests toggle environment variables)."""
    for fn in (_cpu_status, _triton_status, _cuda_status):
        fn.cache_clear()


def _device_ok(name: str, device_type: str) -> tuple[bool, str]:
    if name == "reference":
        return True, ""
    if name == "cpu":
        return device_type == "cpu", "the cpu backend runs CPU tensors only"
    if name == "cuda":
        return device_type == "cuda", "the cuda backend runs CUDA tensors only"
    if name == "triton":
        if device_type == "cuda":
            return True, ""
        if device_type == "cpu" and triton_interpreted():
            return True, ""
        return False, "the triton backend runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)"
    return False, f"unknown backend {name}"


def device_type_of(*tensors: Optional[torch.Tensor]) -> str:
    types = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if len(types) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(types)}")
    return types.pop() if types else "cpu"


def resolve(op: str, supported: tuple[str, ...], *tensors: Optional[torch.Tensor],
            name: Optional[str] = None) -> str:
    """Pick the backend that runs ``op`` on ``tensors``.

    ``supported`` lists the backends that implement ``op``. An explicit backend that cannot
    run raises :class:`BackendUnavailableError` naming the reason; ``auto`` falls back.
    """
    requested = _check_name(name) if name is not None else get_backend()
    device_type = device_type_of(*tensors)
    if requested != "auto":
        if requested not in supported:
            raise BackendUnavailableError(
                f"{op}: backend {requested!r} does not implement this op (it has {supported})"
            )
        ok, why = availability(requested)
        if not ok:
            raise BackendUnavailableError(f"{op}: backend {requested!r} is unavailable: {why}")
        ok, why = _device_ok(requested, device_type)
        if not ok:
            raise BackendUnavailableError(
                f"{op}: backend {requested!r} cannot run {device_type} tensors: {why}"
            )
        return requested
    for candidate in AUTO_ORDER.get(device_type, ("reference",)):
        if candidate in supported and availability(candidate)[0] and _device_ok(candidate, device_type)[0]:
            return candidate
    return "reference"


def available_backends(device_type: str = "cpu") -> list[str]:
    """Backends that can run tensors of ``device_type`` here."""
    return [b for b in BACKENDS if availability(b)[0] and _device_ok(b, device_type)[0]]
