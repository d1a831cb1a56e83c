"""Small file helpers: atomic writes, safetensors reads that name the file on failure."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch


class CorruptFileError(ValueError):
    """A file is missing, truncated, unreadable or lacks something it must hold."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor],
                        metadata: Optional[dict[str, str]] = None) -> None:
    """safetensors file written to a temporary name, then renamed over ``path``."""
    from safetensors.torch import save

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=metadata))


def read_json(path: Path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{what} {path} is missing")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{what} {path} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{what} {path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def load_tensors(path: Path, what: str = "file", device="cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (never unpickles); errors name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{what} {path} is missing")
    data = path.read_bytes()
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise CorruptFileError(
            f"{what} {path} is truncated or corrupt ({len(data)} bytes; safetensors says: {exc})"
        ) from None
    return {k: v.to(device) for k, v in tensors.items()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
