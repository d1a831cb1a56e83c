"""The C++ CPU backend: launchers over the extension ``pyinterp._C`` (csrc/cpu)."""
from __future__ import annotations

import importlib

import torch

from pyinterp.backends.registry import Backend, register_backend


def ext():
    """The compiled extension module (raises ImportError when it is not built)."""
    from pyinterp import _C

    return _C


def num_threads() -> int:
    # Follow torch's setting so that torch.set_num_threads governs both libraries.
    return max(1, torch.get_num_threads())


DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def ptr(t) -> int:
    """A tensor's address as a kernel argument (0 for None)."""
    return 0 if t is None else t.data_ptr()


def _available() -> tuple[bool, str]:
    try:
        importlib.import_module("pyinterp._C")
    except ImportError as exc:  # not built: a source checkout without tools/build_ext.sh
        return False, f"C++ extension pyinterp._C is not built ({exc})"
    return True, "pyinterp._C loaded"


register_backend(Backend(name="cpu", module=__name__, available=_available, devices=("cpu",),
                         auto={"cpu": 10}))
