"""``pyinterp.info()``: versions, devices and what each backend can do here."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

from pyinterp import _backend


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info_dict() -> dict:
    import pyinterp

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    backends = {}
    for name in _backend.BACKENDS:
        ok, why = _backend.availability(name)
        backends[name] = {"available": ok, "detail": why}
    return {
        "pyinterp": pyinterp.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "packages": {p: _version(p) for p in ("triton", "cupy-cuda12x", "cupy-cuda13x", "numba",
                                              "transformers", "tokenizers", "safetensors")},
        "devices": devices,
        "backend_in_force": _backend.get_backend(),
        "backends": backends,
    }


def info(print_out: bool = True) -> dict:
    """Print (and return) versions, devices and each backend's availability with the reason."""
    data = info_dict()
    if print_out:
        lines = [
            f"pyinterp {data['pyinterp']}  (python {data['python']}, {data['platform']})",
            f"torch {data['torch']}  threads={data['torch_threads']}",
            "packages: " + ", ".join(f"{k} {v}" for k, v in data["packages"].items() if v != "not installed"),
            "devices: " + ", ".join(data["devices"]),
            f"backend in force: {data['backend_in_force']}",
            "backends:",
        ]
        for name, b in data["backends"].items():
            mark = "yes" if b["available"] else "no "
            lines.append(f"  {name:<10} {mark}  {b['detail']}")
        print("\n".join(lines))
    return data
