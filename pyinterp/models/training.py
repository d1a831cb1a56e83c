"""Training loop: AdamW, linear warm-up + cosine decay, tqdm progress, periodic evaluation,
atomic checkpoints with exact resume.

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
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Union

import torch

from pyinterp.models.io import atomic_save_tensors, atomic_write_text, load_tensors

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


def save_checkpoint(out_dir: Path, model, opt, step: int, history: dict, cfg: TrainConfig) -> Path:
    """Write ``out_dir/step-XXXXXXX`` (weights, config, optimizer, trainer state) atomically:
    files go to a temporary directory that is renamed, then ``latest`` points to it."""
    from pyinterp.models.io import save_model
    from pyinterp.models.transformer import Transformer

    out_dir = Path(out_dir)
    final = out_dir / f"step-{step:07d}"
    tmp = out_dir / f".step-{step:07d}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if isinstance(model, Transformer):
        save_model(model, tmp)
    else:
        atomic_save_tensors(model.state_dict(), tmp / "model.safetensors")
    ot, om = _flatten_optimizer(opt)
    atomic_save_tensors(ot, tmp / "optimizer.safetensors")
    atomic_write_text(tmp / "optimizer.json", json.dumps(om))
    rng = {"torch_rng": torch.get_rng_state()}
    atomic_save_tensors(rng, tmp / "rng.safetensors")
    atomic_write_text(tmp / "trainer_state.json", json.dumps(
        {"step": step, "train_config": cfg.to_dict(), "history": history}, indent=1))
    write_checksums(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(out_dir / LATEST, final.name)
    kept = sorted(p for p in out_dir.glob("step-*") if p.is_dir())
    for old in kept[: max(0, len(kept) - max(1, cfg.keep_checkpoints))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Union[str, Path]) -> Optional[Path]:
    p = Path(out_dir) / LATEST
    if not p.is_file():
        return None
    d = Path(out_dir) / p.read_text().strip()
    return d if d.is_dir() else None


CHECKSUMS = "checksums.json"


class CorruptCheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt (its sha256 does not match)."""


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(ckpt: Path) -> None:
    """Record the sha256 of every file of a checkpoint directory in ``checksums.json``."""
    sums = {p.name: _sha256(p) for p in sorted(Path(ckpt).iterdir())
            if p.is_file() and p.name != CHECKSUMS}
    atomic_write_text(Path(ckpt) / CHECKSUMS, json.dumps(sums, indent=1, sort_keys=True))


def verify_checkpoint(ckpt: Path) -> None:
    """Check every file against ``checksums.json`` before anything is loaded; a missing,
    truncated or altered file raises :class:`CorruptCheckpointError` naming it."""
    ckpt = Path(ckpt)
    listing = ckpt / CHECKSUMS
    if not listing.is_file():
        raise CorruptCheckpointError(f"checkpoint {ckpt} has no {CHECKSUMS} (incomplete or "
                                     "written by an older pyinterp); refusing to load it")
    try:
        sums = json.loads(listing.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"{listing} is not valid JSON ({exc})") from None
    for name, digest in sums.items():
        f = ckpt / name
        if not f.is_file():
            raise CorruptCheckpointError(f"checkpoint file {f} is missing (listed in {listing})")
        if _sha256(f) != digest:
            raise CorruptCheckpointError(f"checkpoint file {f} is truncated or corrupt: its "
                                         f"sha256 does not match {listing}")


def load_checkpoint(ckpt: Path, model, opt) -> dict:
    verify_checkpoint(ckpt)
    model.load_state_dict(load_tensors(ckpt / "model.safetensors"), strict=True)
    meta = json.loads((ckpt / "optimizer.json").read_text())
    opt.load_state_dict(_unflatten_optimizer(load_tensors(ckpt / "optimizer.safetensors"), meta))
    torch.set_rng_state(load_tensors(ckpt / "rng.safetensors")["torch_rng"])
    return json.loads((ckpt / "trainer_state.json").read_text())


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
          stop_after: Optional[int] = None) -> TrainResult:
    """Train ``model`` on ``data`` for ``cfg.max_steps`` steps.

    data: an (N, n_ctx) int64 tensor of token rows (seeded shuffling, epochs as needed), an
    iterable of (B, n_ctx) batches (re-iterated as needed), or ``callable(step) -> batch``.
    loss_fn(model, batch) -> scalar (default ``model.loss(batch)``), e.g. for hooks or toy
    models. eval_fn(model, step) -> dict of metrics, run every ``cfg.eval_every`` steps and at
    the end (``eval_data`` rows give a default eval loss). With ``out_dir``, checkpoints go
    there every ``cfg.checkpoint_every`` steps and at the end, plus ``metrics.json``; an
    existing checkpoint there is resumed when ``resume``. ``stop_after``: stop (with a
    checkpoint) after this many steps in total, as if interrupted (used by tests).
    """
    cfg = cfg or TrainConfig()
    if eval_fn is None and eval_data is not None:
        eval_fn = _default_eval(eval_data, cfg.batch_size)
    loss_fn = loss_fn or (lambda m, b: m.loss(b))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    step = 0
    history: dict = {"loss": [], "lr": [], "eval": [], "tokens_per_s": []}
    if out is not None and resume:
        ck = latest_checkpoint(out)
        if ck is not None:
            state = load_checkpoint(ck, model, opt)
            step, history = state["step"], state["history"]
    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    model.train()
    device = next(model.parameters()).device
    bar = None
    if cfg.progress and step < end:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
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
                save_checkpoint(out, model, opt, step, history, cfg)
                atomic_write_text(out / "metrics.json", json.dumps(history, indent=1))
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return TrainResult(model=model, step=step, history=history, out_dir=out)
