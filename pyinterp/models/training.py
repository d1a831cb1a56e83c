"""Training loop: AdamW, linear warm-up + cosine decay, progress (``pyinterp._progress``), periodic
evaluation, atomic checkpoints with exact resume.

    from pyinterp.models import Transformer, TransformerConfig, TrainConfig, train
    result = train(model, rows, TrainConfig(max_steps=1000, batch_size=32), out_dir="runs/x")

Determinism: batches come from a seeded permutation (tensor data) or the data iterable's
own order; a run interrupted at a checkpoint and resumed gives bit-for-bit the same weights as
an uninterrupted one (same machine, same thread count; tested on CPU).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Union

import torch

from pyinterp import _rundir
from pyinterp._files import (
    CorruptFileError,
    atomic_save_tensors,
    atomic_write_json,
    atomic_write_text,
    inside,
    load_tensors,
    read_bytes,
    read_json,
    read_verified,
    sha256_file,
)
from pyinterp._rundir import RunMismatchError, WriterLock, claim, new_run_id, pick_latest

LATEST = "latest"


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (JSON serialisable).

    lr schedule: linear warm-up over ``warmup_steps`` to ``lr``, then cosine to
    ``lr * min_lr_ratio`` at ``max_steps``. Weight decay applies to matrices only.
    ``eval_every`` / ``checkpoint_every`` in steps (0 = only at the end).
    """

    max_steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: Optional[float] = 1.0
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        for name in ("max_steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * t))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # foreach=False: the single-tensor path is bit-reproducible across save/load.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=False)


# -- data -------------------------------------------------------------------------------------
def _batches(data, cfg: TrainConfig, start_step: int) -> Iterator[torch.Tensor]:
    """Batch ``start_step``, ``start_step + 1``, ... of the deterministic batch sequence."""
    if isinstance(data, torch.Tensor):
        if data.ndim != 2:
            raise ValueError(f"data tensor must be (N, n_ctx) token rows, got {tuple(data.shape)}")
        n = data.shape[0]
        bs = cfg.batch_size
        if n < bs:
            raise ValueError(f"data has {n} rows, fewer than batch_size={bs}")
        per_epoch = n // bs
        epoch, offset = divmod(start_step, per_epoch)
        while True:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
            for i in range(offset, per_epoch):
                yield data[perm[i * bs:(i + 1) * bs]]
            epoch, offset = epoch + 1, 0
    if callable(data) and not hasattr(data, "__iter__"):
        step = start_step
        while True:  # data(step) -> batch
            yield data(step)
            step += 1
    skip = start_step
    while True:  # re-iterate an iterable when it runs out (epochs), skipping consumed batches
        got = False
        for b in data:
            got = True
            if skip:
                skip -= 1
                continue
            yield b
        if not got:
            raise ValueError("data yielded no batches")


# -- checkpoints ------------------------------------------------------------------------------
def _flatten_optimizer(opt: torch.optim.Optimizer):
    sd = opt.state_dict()
    tensors, state_meta = {}, {}
    for pid, st in sd["state"].items():
        meta = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v
            else:
                meta[k] = v
        state_meta[str(pid)] = meta
    return tensors, {"param_groups": sd["param_groups"], "state_meta": state_meta}


def _unflatten_optimizer(tensors: Dict[str, torch.Tensor], meta: dict) -> dict:
    state: Dict[int, dict] = {int(k): dict(v) for k, v in meta["state_meta"].items()}
    for name, t in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = t
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


CHECKSUMS = "checksums.json"
STATE = "trainer_state.json"
CorruptCheckpointError = CorruptFileError  # the name before pyinterp._files: one type
LEGACY_RUN = "legacy"  # run id of checkpoints written before run ids existed
_STEP_DIR = re.compile(r"^step-(\d{7})$")
_NEEDED = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", STATE)
# TrainConfig fields that do not change what a run computes (a resumption may change them).
_COSMETIC = ("eval_every", "checkpoint_every", "keep_checkpoints", "log_every", "progress")
# Model config fields that only shape the initial weights, which resuming replaces: a
# difference there is reported (a warning), not refused.
_INIT_ONLY = ("model.seed", "model.init_std")


def run_identity(model, cfg: TrainConfig) -> dict:
    """What makes two runs the same: the result-relevant TrainConfig fields and the model's
    config (or, for other modules, its parameter shapes)."""
    mcfg = getattr(model, "cfg", None)
    arch = (mcfg.to_dict() if hasattr(mcfg, "to_dict")
            else {k: list(v.shape) for k, v in model.state_dict().items()})
    train = {k: v for k, v in cfg.to_dict().items() if k not in _COSMETIC}
    return json.loads(json.dumps({"train": train, "model": arch}, default=str))


def _diff(old: dict, new: dict, prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def step_dirs(out_dir: Path) -> List[Path]:
    return _rundir.step_dirs(out_dir, _STEP_DIR)


def run_of(ckpt: Path) -> str:
    """The run id a checkpoint folder records (unverified: for telling runs apart only)."""
    return _rundir.recorded_run(Path(ckpt) / STATE, LEGACY_RUN)


def save_checkpoint(out_dir: Path, model, opt, step: int, history: dict, cfg: TrainConfig,
                    run_id: str = LEGACY_RUN, identity: Optional[dict] = None) -> Path:
    """Write ``out_dir/step-XXXXXXX`` (weights, config, optimizer, trainer state, checksums)
    atomically: files go to a temporary folder that is renamed, then ``latest`` names it.

    The caller holds the directory's lock (:func:`train` does). Rotation removes only this
    run's checkpoints older than ``step``, keeping ``cfg.keep_checkpoints`` in all.
    """
    from pyinterp.models.io import save_model
    from pyinterp.models.transformer import Transformer

    out_dir = Path(out_dir)
    final = out_dir / f"step-{step:07d}"

    def fill(tmp: Path) -> None:
        if isinstance(model, Transformer):
            save_model(model, tmp)
        else:
            atomic_save_tensors(tmp / "model.safetensors", model.state_dict())
        ot, om = _flatten_optimizer(opt)
        atomic_save_tensors(tmp / "optimizer.safetensors", ot)
        atomic_write_json(tmp / "optimizer.json", om, indent=None)
        atomic_save_tensors(tmp / "rng.safetensors", {"torch_rng": torch.get_rng_state()})
        atomic_write_json(tmp / STATE, {
            "step": step, "train_config": cfg.to_dict(), "history": history, "run_id": run_id,
            "identity": identity if identity is not None else run_identity(model, cfg)},
            indent=1)
        write_checksums(tmp)

    _rundir.write_step(final, fill, lambda: atomic_write_text(out_dir / LATEST, final.name),
                       _pointer(out_dir, quiet=True))
    _rundir.rotate(step_dirs(out_dir), lambda d: int(d.name[5:]), run_of, run_id, step,
                   cfg.keep_checkpoints)
    return final


def _pointer(out_dir: Path, quiet: bool = False) -> Optional[Path]:
    """The folder the ``latest`` file names (None without the file); a name that is not a
    step folder of ``out_dir`` is a :class:`CorruptFileError`."""
    p = Path(out_dir) / LATEST
    try:
        if not p.is_file():
            return None
        text = read_bytes(p, "checkpoint pointer", max_bytes=4096).decode("utf-8").strip()
        if not _STEP_DIR.match(text):
            raise CorruptFileError(f"checkpoint pointer {p} holds {text[:40]!r}, expected the name "
                                   "of a step-<NNNNNNN> folder beside it", p)
        return inside(p.parent, text, "checkpoint folder", p)
    except (OSError, UnicodeDecodeError, CorruptFileError) as exc:
        if quiet:
            return None
        if isinstance(exc, UnicodeDecodeError):
            raise CorruptFileError(f"checkpoint pointer {p} is not text", p) from None
        raise


def latest_checkpoint(out_dir: Union[str, Path]) -> Optional[Path]:
    """The newest checkpoint folder in ``out_dir`` (None when there is none).

    ``latest`` names it; when that pointer is missing or damaged but step folders exist, the
    newest one that verifies is used (with a warning), else :class:`CorruptFileError` --
    never a silent restart from step 0.
    """
    out_dir = Path(out_dir)
    return pick_latest(out_dir / LATEST, lambda: _pointer(out_dir),
                       lambda d: (d / CHECKSUMS).is_file(), step_dirs(out_dir), verify_checkpoint)


def write_checksums(ckpt: Path) -> None:
    """Record the sha256 of every file of a checkpoint directory in ``checksums.json``
    (itself checksummed)."""
    sums = {p.name: sha256_file(p) for p in sorted(Path(ckpt).iterdir())
            if p.is_file() and p.name != CHECKSUMS}
    atomic_write_json(Path(ckpt) / CHECKSUMS, sums, checksum=True, indent=1)


def verify_checkpoint(ckpt: Path) -> Dict[str, bytes]:
    """Check every file against ``checksums.json`` before anything is loaded; a missing,
    truncated or altered file raises :class:`CorruptFileError` naming it. Returns the
    verified bytes of every listed file."""
    ckpt = Path(ckpt)
    listing = ckpt / CHECKSUMS
    if not listing.is_file():
        raise CorruptFileError(f"checkpoint {ckpt} has no {CHECKSUMS} (incomplete or "
                               "written by an older pyinterp); refusing to load it", listing)
    sums = read_json(listing, "checkpoint checksums")
    missing = [n for n in _NEEDED if n not in sums]
    if missing:
        raise CorruptFileError(f"{listing} does not list {missing}; expected every file of a "
                               "checkpoint", listing)
    return {name: read_verified(inside(ckpt, name, "checkpoint file", listing), digest,
                                "checkpoint file", listing)
            for name, digest in sums.items()}


def _read_state(ckpt: Path, data: Dict[str, bytes]) -> dict:
    f = Path(ckpt) / STATE
    state = read_json(f, "trainer state", data=data[STATE])
    if not isinstance(state.get("step"), int) or state["step"] < 0:
        raise CorruptFileError(f"{f}: 'step' must be an int >= 0, got {state.get('step')!r}", f)
    return state


def load_checkpoint(ckpt: Path, model, opt) -> dict:
    """Restore ``model`` and ``opt`` from a checkpoint folder (all of it verified first, every
    tensor's shape checked against the model before anything is copied); returns the trainer
    state (step, history, run id)."""
    ckpt = Path(ckpt)
    data = verify_checkpoint(ckpt)
    state = _read_state(ckpt, data)
    wfile = ckpt / "model.safetensors"
    weights = load_tensors(wfile, "model weights", data=data["model.safetensors"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != got:
        raise CorruptFileError(f"{wfile} does not hold this model's tensors: "
                               + "; ".join(_diff(got, expected)[:5]), wfile)
    try:
        meta = read_json(ckpt / "optimizer.json", "optimizer state", data=data["optimizer.json"])
        opt_sd = _unflatten_optimizer(load_tensors(ckpt / "optimizer.safetensors", "optimizer state",
                                                   data=data["optimizer.safetensors"]), meta)
        rng = load_tensors(ckpt / "rng.safetensors", "RNG state",
                           data=data["rng.safetensors"])["torch_rng"]
        model.load_state_dict(weights, strict=True)
        opt.load_state_dict(opt_sd)
        torch.set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, CorruptFileError):
            raise
        raise CorruptFileError(f"checkpoint {ckpt} does not fit this model and optimizer "
                               f"({type(exc).__name__}: {exc})", ckpt) from None
    return state


# -- the loop ---------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: torch.nn.Module
    step: int
    history: dict = field(default_factory=dict)
    out_dir: Optional[Path] = None

    @property
    def final_loss(self) -> Optional[float]:
        losses = self.history.get("loss", [])
        return losses[-1][1] if losses else None


def _default_eval(eval_data: torch.Tensor, batch_size: int):
    def evaluate(model, step):
        losses = []
        with torch.no_grad():
            for i in range(0, eval_data.shape[0], batch_size):
                losses.append(float(model.loss(eval_data[i:i + batch_size])) *
                              eval_data[i:i + batch_size].shape[0])
        return {"eval_loss": sum(losses) / eval_data.shape[0]}
    return evaluate


def train(model, data, cfg: Optional[TrainConfig] = None, out_dir: Optional[Union[str, Path]] = None,
          eval_fn: Optional[Callable[[torch.nn.Module, int], Dict[str, float]]] = None,
          eval_data: Optional[torch.Tensor] = None, resume: bool = True,
          loss_fn: Optional[Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = None,
          stop_after: Optional[int] = None, fresh: bool = False) -> TrainResult:
    """Train ``model`` on ``data`` for ``cfg.max_steps`` steps.

    data: an (N, n_ctx) int64 tensor of token rows (seeded shuffling, epochs as needed), an
    iterable of (B, n_ctx) batches (re-iterated as needed), or ``callable(step) -> batch``.
    loss_fn(model, batch) -> scalar (default ``model.loss(batch)``), e.g. for hooks or toy
    models. eval_fn(model, step) -> dict of metrics, run every ``cfg.eval_every`` steps and at
    the end (``eval_data`` rows give a default eval loss). With ``out_dir``, checkpoints go
    there every ``cfg.checkpoint_every`` steps and at the end, plus ``metrics.json``; an
    existing checkpoint there is resumed when ``resume``. ``stop_after``: stop (with a
    checkpoint) after this many steps in total, as if interrupted (used by tests).

    ``out_dir`` holds one run (docs/decisions/checkpoint-run-identity.md): train() locks it
    (a second writer fails at once); resuming a run trained with another model config or
    TrainConfig (fields other than logging/checkpointing) is a RunMismatchError listing the
    differences, as is ``resume=False`` on a directory holding a run; ``fresh=True`` moves
    the old run to ``out_dir/superseded/`` and starts over (nothing is deleted).
    """
    cfg = cfg or TrainConfig()
    if eval_fn is None and eval_data is not None:
        eval_fn = _default_eval(eval_data, cfg.batch_size)
    loss_fn = loss_fn or (lambda m, b: m.loss(b))
    out = Path(out_dir) if out_dir is not None else None
    lock = WriterLock(out, "training directory").acquire() if out is not None else None
    try:
        return _train(model, data, cfg, out, eval_fn, loss_fn, resume, fresh, stop_after)
    finally:
        if lock is not None:
            lock.release()


def _open_run(out: Path, model, opt, cfg: TrainConfig, identity: dict, resume: bool,
              fresh: bool):
    """Resume the run in ``out`` or start one there; returns (run id, step, history)."""
    run_id, step, history = new_run_id(identity), 0, None
    ck = latest_checkpoint(out)
    hint = "Pass fresh=True to move it to {}/ and start over, or use another out_dir.".format(
        out / "superseded")
    if ck is not None and not fresh:
        state = _read_state(ck, verify_checkpoint(ck))
        old_run = state.get("run_id", LEGACY_RUN)
        if not resume:
            raise RunMismatchError(f"{out} holds a run (run id {old_run}, {ck.name}) and "
                                   f"resume=False. {hint}")
        stored = state.get("identity") or {"train": {k: v for k, v in state.get(
            "train_config", {}).items() if k not in _COSMETIC}, "model": identity["model"]}
        diff = _diff(stored, identity)
        init_only = [d for d in diff if d.split(":")[0] in _INIT_ONLY]
        if init_only:
            warnings.warn(f"resuming the run in {out} ({ck.name}): its weights replace this "
                          f"model's initialisation, which differs ({'; '.join(init_only)})",
                          stacklevel=4)
        diff = [d for d in diff if d not in init_only]
        if diff:
            raise RunMismatchError(f"{out} holds a run (run id {old_run}, {ck.name}) with other "
                                   f"settings than this call: {'; '.join(diff)}. {hint}")
        run_id = old_run
    extra = [out / LATEST, out / "metrics.json"] if ck is None or fresh else []
    claim(out, run_id, step_dirs(out), run_of, fresh, "", also=extra)
    if ck is not None and not fresh:
        state = load_checkpoint(ck, model, opt)
        step, history = state["step"], state["history"]
    return run_id, step, history


def _train(model, data, cfg, out, eval_fn, loss_fn, resume, fresh, stop_after) -> TrainResult:
    torch.manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    step = 0
    history: dict = {"loss": [], "lr": [], "eval": [], "tokens_per_s": []}
    identity = run_identity(model, cfg)
    run_id = None
    if out is not None:
        run_id, step, old = _open_run(out, model, opt, cfg, identity, resume, fresh)
        history = old if old is not None else history
    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    model.train()
    device = next(model.parameters()).device
    bar = None
    if cfg.progress and step < end:
        from pyinterp._progress import progress

        bar = progress(total=cfg.max_steps, initial=step, desc="train", unit="step")
    batches = _batches(data, cfg, step)
    t0, tokens_seen = time.perf_counter(), 0
    try:
        while step < end:
            batch = next(batches).to(device)
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=False)
            opt.step()
            step += 1
            tokens_seen += batch.numel()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"loss became {lv} at step {step}; lower TrainConfig.lr "
                                         "or enable grad_clip")
            if step % max(1, cfg.log_every) == 0 or step == end:
                history["loss"].append([step, lv])
                history["lr"].append([step, lr])
                el = time.perf_counter() - t0
                history["tokens_per_s"].append([step, tokens_seen / el if el > 0 else None])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4f}", lr=f"{lr:.2e}")
            if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0)
                                        or step == cfg.max_steps):
                model.eval()
                metrics = dict(eval_fn(model, step))
                model.train()
                history["eval"].append({"step": step, **metrics})
                if bar is not None:
                    bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                          if isinstance(v, (int, float))))
            if out is not None and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                                    or step == end):
                save_checkpoint(out, model, opt, step, history, cfg, run_id, identity)
                atomic_write_text(out / "metrics.json", json.dumps(history, indent=1))
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return TrainResult(model=model, step=step, history=history, out_dir=out)
