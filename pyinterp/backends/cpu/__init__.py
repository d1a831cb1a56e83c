"""The C++ CPU backend: launchers and autograd Functions over ``pyinterp._C``."""
from __future__ import annotations

import torch


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
