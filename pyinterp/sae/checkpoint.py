"""Training checkpoints: safetensors for tensors, JSON for everything else, no pickle.

Layout of ``<dir>/step_<NNNNNNNN>/``::

    trainer.json                 run id, step, tokens, configs, optimizer hyper-parameters,
                                 source position, sha256 of every file below, and its own
                                 sha256 (field "sha256")
    sae_<name>.safetensors       the dictionary's parameters and buffers
    optim_<name>.safetensors     Adam moments and step counts ("<param>.<key>")
    state.safetensors            dead-latent counters, firing counts, RNG state

A step directory is written under a temporary name and renamed into place; ``latest.json``
(also replaced atomically, checksummed) names the newest complete one. The directory belongs
to one run (:mod:`pyinterp._rundir`): a writer holds its lock, another run's checkpoints are
never rotated or overwritten. See docs/decisions/sae-checkpoint-format.md and
docs/decisions/checkpoint-run-identity.md.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from pyinterp import _rundir
from pyinterp._files import (
    JSON_DIGEST_KEY,
    CorruptFileError,
    atomic_save_tensors,
    atomic_write_json,
    check_json_digest,
    inside,
    load_tensors,
    read_json,
    read_verified,
    sha256_file,
)

LATEST = "latest.json"
TRAINER = "trainer.json"
FORMAT = "pyinterp-sae-checkpoint-2"
OLD_FORMATS = ("pyinterp-sae-checkpoint-1",)  # no run id, no trainer.json checksum
LEGACY_RUN = "legacy"  # the run id of checkpoints written before run ids existed
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def stack_state(sd: dict, layout: Optional[Sequence[Sequence[int]]]) -> dict:
    """Optimizer state dict ``sd`` in a checkpoint's ``layout`` (see
    :meth:`pyinterp.sae.dictionary.SparseDictionary.checkpoint_layout`): stored entry j holds
    the parameters ``layout[j]``, their tensors stacked on a new dim 0 when there are
    several, their scalars (Adam's step) once, which must agree; None: ``sd`` unchanged."""
    if layout is None:
        return sd
    state = {}
    for j, pids in enumerate(layout):
        entries = [sd["state"].get(p) for p in pids]
        if not any(entries):
            continue
        if not all(entries) or any(set(e) != set(entries[0]) for e in entries):
            raise ValueError(f"parameters {list(pids)} are stored as one tensor but their "
                             "optimizer states differ in what they hold")
        out = {}
        for key, first in entries[0].items():
            values = [e[key] for e in entries]
            if len(values) > 1 and isinstance(first, torch.Tensor) and first.dim() > 0:
                out[key] = torch.stack(values)
            elif all(torch.equal(torch.as_tensor(v), torch.as_tensor(first)) for v in values):
                out[key] = first
            else:
                raise ValueError(f"parameters {list(pids)} are stored as one tensor but their "
                                 f"optimizer {key!r} differs: {values}")
        state[j] = out
    owner = {p: j for j, pids in enumerate(layout) for p in pids}
    groups = [dict(g, params=sorted({owner[p] for p in g["params"]})) for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def split_state(sd: dict, layout: Optional[Sequence[Sequence[int]]]) -> dict:
    """The inverse of :func:`stack_state`: a stored state dict back in parameter order."""
    if layout is None:
        return sd
    stored = list(sd["state"]) + [j for g in sd["param_groups"] for j in g["params"]]
    if any(not 0 <= int(j) < len(layout) for j in stored):
        raise ValueError(f"the optimizer state names entries {sorted(set(stored))}, the "
                         f"dictionary stores {len(layout)}")
    state = {}
    for j, entry in sd["state"].items():
        pids = layout[int(j)]
        if len(pids) == 1:
            state[pids[0]] = entry
            continue
        for key, v in entry.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] != len(pids):
                raise ValueError(f"optimizer {key!r} of stored entry {j} has shape "
                                 f"{tuple(v.shape)}, needs {len(pids)} stacked parameters")
        for i, p in enumerate(pids):  # copies: each parameter's state is updated in place
            state[p] = {key: (v[i] if v.dim() > 0 else v).clone()
                        if isinstance(v, torch.Tensor) else v for key, v in entry.items()}
    groups = [dict(g, params=sorted(p for j in g["params"] for p in layout[int(j)]))
              for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def optimizer_to_tensors(opt: torch.optim.Optimizer, layout=None
                         ) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able groups;
    ``layout``: the dictionary's checkpoint layout (:func:`stack_state`)."""
    sd = stack_state(opt.state_dict(), layout)
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
                           meta: dict, file: Path, layout=None) -> None:
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
    opt.load_state_dict(split_state({"state": state, "param_groups": groups}, layout))


def step_dirs(root: Path) -> list:
    """Step directories under ``root`` (complete or not), oldest first."""
    return _rundir.step_dirs(root, _STEP_DIR)


def run_of(step_dir: Path) -> str:
    """The run id recorded in a step directory (unverified: for telling runs apart only)."""
    return _rundir.recorded_run(Path(step_dir) / TRAINER, LEGACY_RUN)


def claim(root: Path, run_id: str, fresh: bool = False, resume_hint: str = "") -> Optional[Path]:
    """Refuse (or with ``fresh`` move aside) another run's checkpoints in ``root``; see
    :func:`pyinterp._rundir.claim`. Call it holding the directory's lock."""
    root = Path(root)
    pointed = latest_pointer(root)
    pointer_is_ours = pointed is not None and pointed.is_dir() and run_of(pointed) == run_id
    return _rundir.claim(root, run_id, step_dirs(root), run_of, fresh, resume_hint,
                         also=[] if pointer_is_ours else [root / LATEST])


def write(root: Path, step: int, trainer_meta: dict, files: dict[str, dict[str, torch.Tensor]],
          keep: int = 2, run_id: str = LEGACY_RUN) -> Path:
    """Write one checkpoint of run ``run_id`` atomically; keep its newest ``keep`` steps.

    The caller holds the directory's lock and has claimed it (:func:`claim`). Rotation touches
    only this run's checkpoints older than ``step``.
    """
    root = Path(root)
    final = root / f"step_{step:08d}"

    def fill(tmp: Path) -> None:
        digests = {}
        for fname, tensors in files.items():
            atomic_save_tensors(tmp / fname, tensors)
            digests[fname] = sha256_file(tmp / fname)
        meta = dict(trainer_meta, files=digests, run_id=run_id, format=FORMAT)
        atomic_write_json(tmp / TRAINER, meta, checksum=True)

    def pointer() -> None:
        atomic_write_json(root / LATEST, {"step": step, "dir": final.name, "run_id": run_id},
                          checksum=True)

    _rundir.write_step(final, fill, pointer, latest_pointer(root))
    if keep > 0:
        _rundir.rotate(step_dirs(root), lambda d: int(d.name[5:]), run_of, run_id, step, keep)
    return final


def latest_pointer(root: Path) -> Optional[Path]:
    """The step directory ``latest.json`` names, if it is readable and present (no checks)."""
    try:
        return _pointed(Path(root))
    except (OSError, CorruptFileError):
        return None


def _pointed(root: Path) -> Optional[Path]:
    pointer = root / LATEST
    if not pointer.exists():
        return None
    p = read_json(pointer, "checkpoint pointer")
    name = p.get("dir")
    d = inside(root, name, "checkpoint folder", pointer)
    if not _STEP_DIR.match(d.name) or d.parent != root:
        raise CorruptFileError(f"{pointer} names {name!r}, expected a step_<NNNNNNNN> folder "
                               f"directly in {root}", pointer)
    return d


def latest(root: Path) -> Optional[Path]:
    """The newest checkpoint directory under ``root`` (None when there is none).

    ``latest.json`` names it; when the pointer is missing or damaged, the newest step folder
    that verifies is used (with a warning), else :class:`CorruptFileError`
    (:func:`pyinterp._rundir.pick_latest`). Never silently nothing.
    """
    root = Path(root)
    return _rundir.pick_latest(root / LATEST, lambda: _pointed(root),
                               lambda d: (d / TRAINER).is_file(), step_dirs(root), read)


def read_meta(path: Path) -> dict:
    """``trainer.json`` of a step directory, its own checksum verified."""
    f = Path(path) / TRAINER
    if not f.is_file():
        raise CorruptFileError(f"checkpoint state {f} is missing (incomplete checkpoint folder)", f)
    meta = read_json(f, "checkpoint state", checksum="ignore")
    if JSON_DIGEST_KEY in meta:
        check_json_digest(meta, f, "checkpoint state")
        meta.pop(JSON_DIGEST_KEY)
    elif meta.get("format") not in OLD_FORMATS:
        raise CorruptFileError(f"checkpoint state {f} has no {JSON_DIGEST_KEY!r} field; expected "
                               f"a checksummed {FORMAT} file", f)
    for field in ("step", "files", "saes", "train_config"):
        if field not in meta:
            raise CorruptFileError(f"{f} is missing the field {field!r}", f)
    if not isinstance(meta["files"], dict) or not isinstance(meta["saes"], dict):
        raise CorruptFileError(f"{f}: 'files' and 'saes' must be JSON objects", f)
    for field in ("step", "tokens"):
        v = meta.get(field, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CorruptFileError(f"{f}: {field!r} must be an int >= 0, got {v!r}", f)
    return meta


def read(path: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Read and verify one checkpoint directory; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    meta = read_meta(path)
    tensors = {}
    for fname, digest in meta["files"].items():
        f = inside(path, fname, "checkpoint file", path / TRAINER)
        data = read_verified(f, digest, "checkpoint file", path / TRAINER)
        tensors[fname] = load_tensors(f, "checkpoint file", data=data)
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
