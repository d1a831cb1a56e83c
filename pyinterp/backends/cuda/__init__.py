"""The CUDA backend: ``csrc/cuda/*.cu`` compiled at run time by CuPy (NVRTC) and launched on
the tensors' device and its current stream (``runtime.py``); one launcher module per family."""
from __future__ import annotations

import importlib.util

import torch

from pyinterp.backends.registry import Backend, register_backend


def _available() -> tuple[bool, str]:
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


register_backend(Backend(name="cuda", module=__name__, available=_available, devices=("cuda",),
                         auto={"cuda": 10}))
