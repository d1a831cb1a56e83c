"""File writes and output-directory checks for the experiments.

Every file an experiment writes goes through these helpers, which write atomically through
:mod:`pyinterp._files` (temporary file, fsync, rename), so an interrupted run never leaves a
half-written metrics.json, figure or checkpoint behind.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from pyinterp._files import atomic_write, atomic_write_text


class ExperimentError(ValueError):
    """A bad request to ``pyinterp reproduce`` (unknown paper/scale, unusable output dir...)."""


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write_text(path, text)


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
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


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
