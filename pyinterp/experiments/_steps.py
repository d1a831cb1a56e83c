"""Checkpointed steps: each part of a paper's run saves its result; a re-run loads it.

A step is ``fn() -> dict`` whose values are tensors, nested dicts of tensors, or JSON values.
The result is stored as one safetensors file (tensors) whose metadata carries the JSON values,
the hash of the configuration and the sha256 of the content (:mod:`pyinterp._files`), under
``<out>/checkpoints/<config-hash>/<step>.safetensors``. Changing the configuration therefore
never reuses stale results, a damaged file is never reused (CorruptFileError naming it), and
nothing is pickled.

``BEFORE_STEP`` is a list of callbacks ``hook(experiment, step)`` run before a step is computed
(not when it is loaded); tests append one that raises to simulate an interruption.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from pyinterp._files import DIGEST_KEY, CorruptFileError, atomic_save_tensors, load_tensors, parse_json
from pyinterp.experiments._io import _jsonable

BEFORE_STEP: list = []

_SEP = "/"


def config_hash(config_dict: dict) -> str:
    """Short stable hash of a config (the device is left out: results move between devices)."""
    d = {k: v for k, v in config_dict.items() if k not in ("device",)}
    blob = json.dumps(_jsonable(d), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _flatten(result: dict, prefix: str = ""):
    tensors, other = {}, {}
    for k, v in result.items():
        if _SEP in str(k):
            raise ValueError(f"step result keys must not contain {_SEP!r}: {k!r}")
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            tensors[key] = v.detach().to("cpu").contiguous()
        elif isinstance(v, dict) and any(isinstance(x, (torch.Tensor, dict)) for x in v.values()):
            t, o = _flatten(v, key + _SEP)
            tensors.update(t)
            other.update(o)
            other.setdefault("__dicts__", []).append(key)
        else:
            other[key] = _jsonable(v)
    return tensors, other


def _unflatten(tensors: dict, other: dict) -> dict:
    out: Dict[str, Any] = {}
    dicts = other.pop("__dicts__", [])
    for key in sorted(dicts, key=len):
        _put(out, key, {})
    for key, v in list(other.items()) + list(tensors.items()):
        _put(out, key, v)
    return out


def _put(root: dict, key: str, value):
    parts = key.split(_SEP)
    d = root
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


class Steps:
    """Run-or-load named steps under one checkpoint directory."""

    def __init__(self, ckpt_dir: Path, experiment: str, chash: str, fresh: bool = False):
        self.dir = Path(ckpt_dir)
        self.experiment = experiment
        self.hash = chash
        self.fresh = fresh
        self.computed: list = []
        self.loaded: list = []
        self.seconds: Dict[str, float] = {}

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.safetensors"

    def done(self, name: str) -> bool:
        return not self.fresh and self.path(name).exists()

    def _load(self, name: str) -> Optional[dict]:
        """The saved result of step ``name`` (verified), or None when it must be computed
        (absent, another config, or written before results carried a checksum)."""
        p = self.path(name)
        try:
            tensors, meta = load_tensors(p, f"checkpoint of step {name!r}", with_metadata=True)
        except CorruptFileError as exc:
            raise CorruptFileError(f"{exc}; delete it (or run with --fresh) to recompute the "
                                   "step", p) from None
        if DIGEST_KEY not in meta or meta.get("config_hash") != self.hash:
            return None
        other = parse_json(meta.get("json", "{}").encode(), p, f"checkpoint of step {name!r}")
        if not isinstance(other, dict):
            raise CorruptFileError(f"checkpoint of step {name!r} {p}: its 'json' metadata must "
                                   "be an object", p)
        return _unflatten(tensors, other)

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        """Return ``fn()``'s result, computing and saving it unless a checkpoint exists."""
        p = self.path(name)
        if self.done(name):
            loaded = self._load(name)
            if loaded is not None:
                self.loaded.append(name)
                return loaded
        for hook in list(BEFORE_STEP):
            hook(self.experiment, name)
        t0 = time.perf_counter()
        result = fn()
        self.seconds[name] = time.perf_counter() - t0
        if not isinstance(result, dict):
            raise TypeError(f"step {name!r} must return a dict, got {type(result).__name__}")
        tensors, other = _flatten(result)
        meta = {"config_hash": self.hash, "json": json.dumps(other), "seconds": f"{self.seconds[name]:.3f}"}
        atomic_save_tensors(p, tensors, metadata=meta)
        self.computed.append(name)
        # Return what a later load returns, so a resumed run computes exactly the same thing.
        return _unflatten({k: v.clone() for k, v in tensors.items()}, json.loads(meta["json"]))
