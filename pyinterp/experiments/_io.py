"""Atomic file writes and output-directory checks for the experiments.

Every file an experiment writes goes through these helpers: write to a temporary file in the
same directory, then ``os.replace`` it over the target, so an interrupted run never leaves a
half-written metrics.json, figure or checkpoint behind.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


class ExperimentError(ValueError):
    """A bad request to ``pyinterp reproduce`` (unknown paper/scale, unusable output dir...)."""


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""

    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _atomic(Path(path), w)


def _jsonable(obj: Any):
    """Numbers, tensors and numpy values -> plain JSON (NaN/inf become null)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # torch / numpy
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def save_figure(fig, path) -> Path:
    """Save a matplotlib Figure as PNG atomically."""
    return _atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def prepare_out_dir(path) -> Path:
    """Create ``path`` if needed and check that files can be written there.

    Raises ExperimentError naming the directory and the reason (exists as a file, permission).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ExperimentError(f"output directory {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExperimentError(
            f"output directory {str(path)!r} is not writable ({e.strerror or e}); "
            "pass a writable directory with --out"
        ) from None
    return path
