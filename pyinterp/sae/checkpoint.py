"""Training checkpoints: safetensors for tensors, JSON for everything else, no pickle.

Layout of ``<dir>/step_<NNNNNNNN>/``::

    trainer.json                 step, tokens, configs, optimizer hyper-parameters, source
                                 position, sha256 of every file below
    sae_<name>.safetensors       the dictionary's parameters and buffers
    optim_<name>.safetensors     Adam moments and step counts ("<param>.<key>")
    state.safetensors            dead-latent counters, firing counts, RNG state

A step directory is written under a temporary name and renamed into place; ``latest.json``
(also replaced atomically) names the newest complete one. See
docs/decisions/sae-checkpoint-format.md.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from pyinterp.sae._files import (CorruptFileError, atomic_save_tensors, atomic_write_json,
                                 load_tensors, read_json, sha256_file)

LATEST = "latest.json"
TRAINER = "trainer.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able groups."""
    sd = opt.state_dict()
    tensors, keys = {}, {}
    for pid, state in sd["state"].items():
        keys[str(pid)] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
                keys[str(pid)][key] = "tensor"
            else:
                keys[str(pid)][key] = value
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, {"param_groups": groups, "state_keys": keys}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict, file: Path) -> None:
    state = {}
    for pid, keys in meta["state_keys"].items():
        entry = {}
        for key, kind in keys.items():
            if kind == "tensor":
                name = f"{pid}.{key}"
                if name not in tensors:
                    raise CorruptFileError(f"{file} is missing the optimizer tensor {name!r}")
                entry[key] = tensors[name]
            else:
                entry[key] = kind
        state[int(pid)] = entry
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def write(root: Path, step: int, trainer_meta: dict, files: dict[str, dict[str, torch.Tensor]],
          keep: int = 2) -> Path:
    """Write one checkpoint atomically; keep the newest ``keep`` step directories."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    digests = {}
    for fname, tensors in files.items():
        atomic_save_tensors(tmp / fname, tensors)
        digests[fname] = sha256_file(tmp / fname)
    atomic_write_json(tmp / TRAINER, dict(trainer_meta, files=digests))
    if final.exists():  # re-written step (e.g. a resumed run saving the same step again)
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(root / LATEST, {"step": step, "dir": final.name})
    steps = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Optional[Path]:
    """The newest complete checkpoint directory under ``root`` (None when there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    pointer = root / LATEST
    if pointer.exists():
        d = root / read_json(pointer, "checkpoint pointer").get("dir", "")
        if (d / TRAINER).is_file():
            return d
    steps = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / TRAINER).is_file())
    return steps[-1] if steps else None


def read(path: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Read and verify one checkpoint directory; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise CorruptFileError(f"checkpoint directory {path} does not exist")
    meta = read_json(path / TRAINER, "checkpoint state")
    for field in ("step", "files", "saes", "train_config"):
        if field not in meta:
            raise CorruptFileError(f"{path / TRAINER} is missing the field {field!r}")
    tensors = {}
    for fname, digest in meta["files"].items():
        f = path / fname
        if not f.is_file():
            raise CorruptFileError(f"checkpoint file {f} is missing (listed in {path / TRAINER})")
        actual = sha256_file(f)
        if actual != digest:
            raise CorruptFileError(f"checkpoint file {f} is corrupt: sha256 {actual[:12]}... does "
                                   f"not match {digest[:12]}... recorded in {path / TRAINER}")
        tensors[fname] = load_tensors(f, "checkpoint file")
    return meta, tensors


def jsonable(obj: Any) -> Any:
    """Reject values JSON would silently mangle (tensors) in trainer metadata."""
    if isinstance(obj, torch.Tensor):
        raise TypeError("tensors belong in the safetensors files, not in trainer.json")
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj
