"""Train one or several dictionaries from one pass over an activation source.

    trainer = SAETrainer({"l0": TopKSAE(512, 16384, k=32, hook_name="blocks.0.hook_resid_post")},
                         store, TrainConfig(steps=10_000, checkpoint_dir="runs/sae"))
    trainer.run()
    # after an interruption:
    trainer = SAETrainer.resume("runs/sae", store)
    trainer.run()

The checkpoint directory belongs to one run (docs/decisions/checkpoint-run-identity.md): a
trainer locks it while it runs, a new trainer refuses a directory holding another run unless
``fresh=True`` (which moves that run to ``<dir>/superseded/``), and rotation deletes only
this run's older checkpoints.

Each dictionary has its own Adam optimiser; a batch from the source is either a tensor
(every one-input dictionary trains on it) or a dict ``hook_name -> (N, d)``: each dictionary
reads the hook points it needs (``dictionary.needed_hooks()``: an SAE its ``hook_name``, a
transcoder its input and output hooks, crosscoders / CLTs every layer's), so one model pass
(:func:`pyinterp.sae.store.stream` with :func:`needed_hooks` of all dictionaries) feeds them
all. Dead-latent counters live on the device; the host reads them only every
``aux_check_every`` steps and at log/checkpoint steps.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from pyinterp._files import CorruptFileError
from pyinterp._rundir import WriterLock, new_run_id
from pyinterp.sae import _kernels as K
from pyinterp.sae import checkpoint as ckpt
from pyinterp.sae.config import SAEConfig
from pyinterp.sae.dictionary import SAELoss, SparseDictionary
from pyinterp.sae.modules import ReLUSAE, build
from pyinterp.sae.optim import Adam, in_backward
from pyinterp.sae.resample import resample_dead
from pyinterp.sae.schedule import coefficient_factor, lr_factor


class NonFiniteError(RuntimeError):
    """NaN or Inf in activations or a loss during training; training stopped."""


@dataclass
class TrainConfig:
    """Trainer settings (all saved in checkpoints).

    steps: optimiser steps in total. lr/betas/eps: Adam. warmup_steps, decay_fraction,
    final_lr_fraction: the learning-rate schedule (:func:`pyinterp.sae.schedule.lr_factor`).
    l1_warmup_steps: ramp of the ReLU sparsity coefficient. grad_clip: max global grad norm
    per dictionary (None: off). optimizer_in_backward: update each parameter as soon as
    backward has its gradient and free that gradient at once (pyinterp.sae.optim.in_backward;
    at most one parameter's gradient is alive instead of all), the same results bit for bit;
    needs grad_clip=None (a global clip needs every gradient first). normalize_activations: estimate the fixed scale with
    E||s x||^2 = d_in from the first ``init_batches`` batches; b_dec_init: "geometric_median",
    "mean" or None, from the same batches (they are not trained on). Both apply only to fresh
    dictionaries: one loaded from disk or the hub, given a state dict, or initialised by an
    earlier trainer (``sae.data_initialised``) keeps its scale and b_dec when fine-tuned,
    unless ``reinitialise=True``. dead_window_tokens: a
    latent that has not fired for this many tokens is dead (AuxK, metrics).
    aux_check_every: steps between host checks whether any latent is dead (AuxK runs only
    then). resample_every/resample_until: dead-latent resampling for ReLU dictionaries
    (Towards Monosemanticity); None disables it. check_finite_every: steps between NaN/Inf
    checks (1: before every optimiser step, so weights are never corrupted).
    """

    steps: int
    lr: float = 2e-4
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    final_lr_fraction: float = 0.0
    l1_warmup_steps: int = 0
    grad_clip: Optional[float] = 1.0
    optimizer_in_backward: bool = False
    normalize_activations: bool = True
    b_dec_init: Optional[str] = "geometric_median"
    init_batches: int = 1
    reinitialise: bool = False
    dead_window_tokens: int = 10_000_000
    aux_check_every: int = 100
    resample_every: Optional[int] = None
    resample_until: Optional[int] = None
    checkpoint_every: Optional[int] = None
    checkpoint_dir: Optional[str] = None
    keep_checkpoints: int = 2
    check_finite_every: int = 1
    log_every: int = 100
    progress: bool = True
    deterministic: bool = False
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.b_dec_init not in (None, "geometric_median", "mean"):
            raise ValueError(f"b_dec_init must be 'geometric_median', 'mean' or None, got {self.b_dec_init!r}")
        for name in ("aux_check_every", "check_finite_every", "log_every", "init_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir")
        if self.optimizer_in_backward and self.grad_clip is not None:
            raise ValueError(
                f"optimizer_in_backward updates each parameter as soon as its gradient is "
                f"complete, so the global gradient-norm clip grad_clip={self.grad_clip} (which "
                "needs every gradient first) cannot be applied: set grad_clip=None")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**d)


# Fields that change what a run computes; the others (logging, where and how often to
# checkpoint, optimizer_in_backward: the same bits, less memory) may differ between a run and
# its resumption.
_COSMETIC = ("checkpoint_every", "checkpoint_dir", "keep_checkpoints", "log_every", "progress",
             "optimizer_in_backward")


def _result_fields(cfg: TrainConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in _COSMETIC}


class _Feed:
    """Draws batches from the source and remembers where it is (for exact resume)."""

    def __init__(self, source):
        self.source = source
        self.consumed = 0
        self._it = None
        self._skip = 0

    def state_dict(self) -> dict:
        d = {"consumed": self.consumed}
        if hasattr(self.source, "state_dict"):
            d["source"] = self.source.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        self.consumed = int(d["consumed"])
        if hasattr(self.source, "load_state_dict") and "source" in d:
            self.source.load_state_dict(d["source"])
        else:
            warnings.warn("the activation source has no state_dict(); resuming by replaying "
                          f"{self.consumed} batches (exact only if the source is deterministic)",
                          stacklevel=3)
            self._skip = self.consumed
        self._it = None

    def next(self):
        if callable(self.source) and not hasattr(self.source, "__iter__"):
            batch = self.source()
        else:
            if self._it is None:
                self._it = iter(self.source)
                for _ in range(self._skip):
                    next(self._it)
                self._skip = 0
            try:
                batch = next(self._it)
            except StopIteration:
                raise RuntimeError(f"the activation source ran out after {self.consumed} batches") from None
        self.consumed += 1
        return batch


class SAETrainer:
    """Adam training of one or several dictionaries on one activation stream."""

    def __init__(self, saes: Union[SparseDictionary, dict, list], source, cfg: TrainConfig,
                 *, callback: Optional[Callable[["SAETrainer", dict], None]] = None,
                 fresh: bool = False):
        """``fresh``: when ``cfg.checkpoint_dir`` holds another run, move it to
        ``<dir>/superseded/`` instead of refusing to start (nothing is deleted)."""
        if isinstance(saes, SparseDictionary):
            saes = {"sae": saes}
        elif isinstance(saes, (list, tuple)):
            saes = {f"sae{i}": s for i, s in enumerate(saes)}
        if not isinstance(saes, dict) or not saes:
            raise TypeError("saes must be a dictionary module, a list of them or a dict name -> module")
        for name, sae in saes.items():
            if not isinstance(sae, SparseDictionary):
                raise TypeError(f"saes[{name!r}] must be a pyinterp.sae dictionary, got {type(sae).__name__}")
            if not str(name).replace("_", "").replace("-", "").replace(".", "").isalnum():
                raise ValueError(f"dictionary name {name!r} must be alphanumeric (it names files)")
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.saes: dict[str, SparseDictionary] = dict(saes)
        self.feed = _Feed(source)
        self.callback = callback
        self.step = 0
        self.tokens = 0
        self.initialised = False
        self.history: list[dict] = []
        # train_step keeps each SAELoss's x / x_hat; run() drops them before backward in the
        # steps it does not log (so backward frees them when it is done with them)
        self._keep_outputs = True
        self.last_checkpoint: Optional[Path] = None
        self.fresh = fresh
        self.run_id = new_run_id({"train": _result_fields(cfg),
                                  "saes": {n: s.cfg.to_dict() for n, s in self.saes.items()}})
        self._lock: Optional[WriterLock] = None
        if cfg.optimizer_in_backward and type(self)._after_backward is not SAETrainer._after_backward:
            raise ValueError(f"{type(self).__name__} works on complete gradients after backward "
                             "(_after_backward); it does not support optimizer_in_backward")
        self.optimizers = {}
        self.since_fired, self.fire_counts, self.aux_on = {}, {}, {}
        self._bad = {}
        for name, sae in self.saes.items():
            sae.deterministic = cfg.deterministic
            dev = sae.W_enc.device
            # torch.optim.Adam(foreach=False)'s update, bit for bit, without its
            # parameter-sized temporaries (pyinterp/sae/optim.py)
            self.optimizers[name] = Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
            self.since_fired[name] = torch.zeros(sae.n_latents, dtype=torch.int64, device=dev)
            self.fire_counts[name] = torch.zeros(sae.n_latents, dtype=torch.int64, device=dev)
            self.aux_on[name] = False
            self._bad[name] = torch.zeros((), dtype=torch.bool, device=dev)

    # -------------------------------------------------------------------- helpers
    def _input(self, batch, name: str) -> tuple:
        """The tensors dictionary ``name`` trains on, as (N, d) rows on its device."""
        sae = self.saes[name]
        out = []
        for x, d in zip(sae.batch_inputs(batch, name), sae.input_widths()):
            if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != d:
                raise ValueError(f"activations for dictionary {name!r} must have shape (N, {d}), "
                                 f"got {tuple(getattr(x, 'shape', ()))}")
            out.append(x.reshape(-1, d).to(sae.W_enc.device))
        return tuple(out)

    def _nonfinite(self, name: str, what: str, step: int):
        where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                 else "no checkpoint had been written yet")
        sae = self.saes[name]
        return NonFiniteError(
            f"non-finite {what} while training dictionary {name!r} (hook {sae.hook_name!r}) at "
            f"step {step}; training stopped and no checkpoint of the bad state was written; {where}")

    def _check_finite(self, step: int, x_by_name: Optional[dict] = None) -> None:
        for name, flag in self._bad.items():
            if bool(flag):
                what = "loss"
                if x_by_name is not None and name in x_by_name and not all(
                        bool(torch.isfinite(x).all()) for x in x_by_name[name]):
                    what = "activations (NaN/Inf in the input batch)"
                raise self._nonfinite(name, what, step)

    def _after_backward(self, name: str, sae: SparseDictionary) -> None:
        """Called after each dictionary's backward, before gradient projection and clipping;
        a no-op here. pyinterp.distributed's data-parallel trainer all-reduces gradients here."""

    # -------------------------------------------------------------------- phases
    @torch.no_grad()
    def initialise(self) -> None:
        """Activation scale and b_dec from the first ``init_batches`` batches."""
        if self.initialised:
            return
        cfg = self.cfg
        fresh = {name: sae for name, sae in self.saes.items()
                 if cfg.reinitialise or not getattr(sae, "data_initialised", False)}
        if fresh and (cfg.normalize_activations or cfg.b_dec_init):
            batches = [self.feed.next() for _ in range(cfg.init_batches)]
            for name, sae in fresh.items():
                per_batch = [self._input(b, name) for b in batches]
                samples = tuple(torch.cat(parts) for parts in zip(*per_batch))
                if not all(bool(torch.isfinite(s).all()) for s in samples):
                    raise self._nonfinite(name, "activations (NaN/Inf in the initialisation sample)", 0)
                sae.initialise(samples, cfg.normalize_activations, cfg.b_dec_init)
                sae.data_initialised = True
        self.initialised = True

    def train_step(self, batch) -> dict[str, SAELoss]:
        """One optimiser step of every dictionary on ``batch``; returns their losses."""
        cfg = self.cfg
        step = self.step
        lr = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.decay_fraction,
                                cfg.final_lr_fraction)
        l1_scale = coefficient_factor(step, cfg.l1_warmup_steps)
        check_now = (step + 1) % cfg.check_finite_every == 0
        out, xs = {}, {}
        for name, sae in self.saes.items():
            x = self._input(batch, name)
            xs[name] = x
            sae.train()
            opt = self.optimizers[name]
            dead = None
            if self.aux_on[name] and sae.uses_dead_mask:
                dead = self.since_fired[name] >= cfg.dead_window_tokens
            res = sae.loss(*x, dead_mask=dead, l1_scale=l1_scale)
            if not self._keep_outputs:
                res.x = res.x_hat = None
            self._bad[name] |= ~torch.isfinite(res.total.detach())
            if check_now:
                self._check_finite(step + 1, xs)
            opt.zero_grad(set_to_none=True)
            for group in opt.param_groups:
                group["lr"] = lr
            if cfg.optimizer_in_backward:
                with in_backward(opt, sae.parameters(), before_update=_projection(sae)):
                    res.total.backward()
            else:
                res.total.backward()
                self._after_backward(name, sae)
                sae.project_decoder_grad()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip, foreach=False)
                opt.step()
                opt.zero_grad(set_to_none=True)  # no gradient outlives its step
            sae.after_step(res)
            n = x[0].shape[0]
            K.update_activity(self.since_fired[name], res.indices, sae.n_latents, values=res.values,
                              increment=n, check_indices=False)  # our encoders' indices
            self.fire_counts[name] += K.activation_counts(res.values, res.indices, sae.n_latents,
                                                          check_indices=False)
            out[name] = res
        self.step += 1
        self.tokens += int(next(iter(xs.values()))[0].shape[0])
        if self.step % cfg.aux_check_every == 0:
            for name in self.saes:
                self.aux_on[name] = bool((self.since_fired[name] >= cfg.dead_window_tokens).any())
        if cfg.resample_every and self.step % cfg.resample_every == 0 and \
                (cfg.resample_until is None or self.step <= cfg.resample_until):
            for name, sae in self.saes.items():
                if isinstance(sae, ReLUSAE):
                    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
                    dead = self.fire_counts[name] == 0
                    resample_dead(sae, dead, xs[name][0], self.optimizers[name], generator=gen)
                    self.since_fired[name].masked_fill_(dead, 0)  # a fresh latent is not dead
                    self.fire_counts[name].zero_()
        return out

    def _log(self, losses: dict[str, SAELoss]) -> dict:
        rec: dict[str, Any] = {"step": self.step, "tokens": self.tokens}
        for name, res in losses.items():
            comp = res.components()
            l0 = float((res.values > 0).sum(-1).float().mean())
            dead = float((self.since_fired[name] >= self.cfg.dead_window_tokens).float().mean())
            rec[name] = dict(comp, l0=l0, dead_fraction=dead, **_fvu(res.x, res.x_hat))
        self.history.append(rec)
        return rec

    def run(self, steps: Optional[int] = None) -> list[dict]:
        """Train until ``cfg.steps`` (or ``steps`` more steps); returns the log records.

        Checkpoints every ``checkpoint_every`` steps and at the end (when a directory is set).
        """
        cfg = self.cfg
        end = cfg.steps if steps is None else min(cfg.steps, self.step + steps)
        if cfg.checkpoint_dir is not None and self._writes_checkpoints():
            self._lock = self._open_checkpoint_dir(Path(cfg.checkpoint_dir))  # 2nd writer fails now
        try:
            self._run(end)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        return self.history

    def _run(self, end: int) -> None:
        from pyinterp._progress import progress

        cfg = self.cfg
        self.initialise()
        bar = progress(total=cfg.steps, initial=self.step, disable=not cfg.progress,
                       desc="SAE training", unit="step")
        try:
            while self.step < end:
                losses = None  # the last step's codes and reconstructions, before the next step
                logs = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == end
                self._keep_outputs = logs
                try:
                    losses = self.train_step(self.feed.next())
                finally:
                    self._keep_outputs = True
                bar.update(1)
                if logs:
                    self._check_finite(self.step)
                    rec = self._log(losses)
                    first = rec[next(iter(self.saes))]
                    bar.set_postfix(loss=f"{first['loss']:.4g}", l0=f"{first['l0']:.1f}",
                                    fvu=f"{first['fvu']:.3f}")
                    if self.callback is not None:
                        self.callback(self, rec)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        if cfg.checkpoint_dir is not None and (self.last_checkpoint is None or
                                               not self.last_checkpoint.name.endswith(f"{self.step:08d}")):
            self.save_checkpoint()

    # -------------------------------------------------------------------- checkpoints
    def _writes_checkpoints(self) -> bool:
        """Whether this process writes checkpoints (one rank of a distributed run does)."""
        return True

    def _open_checkpoint_dir(self, root: Path) -> WriterLock:
        """Lock ``root`` and make sure it holds no other run (see
        :func:`pyinterp.sae.checkpoint.claim`); returns the lock, acquired once more."""
        if self._lock is not None and self._lock.directory == root:
            return self._lock.acquire()
        lock = WriterLock(root, "checkpoint directory").acquire()
        try:
            ckpt.claim(root, self.run_id, self.fresh,
                       resume_hint=f"Continue it with SAETrainer.resume({str(root)!r}, source). ")
        except BaseException:
            lock.release()
            raise
        return lock

    def save_checkpoint(self, root: Optional[Union[str, Path]] = None) -> Path:
        """Write the full training state (atomic); refuses to save a non-finite state."""
        root = Path(root or self.cfg.checkpoint_dir or "")
        if not str(root):
            raise ValueError("no checkpoint directory: set TrainConfig.checkpoint_dir or pass root")
        self._check_finite(self.step)
        lock = self._open_checkpoint_dir(root)
        try:
            return self._save(root)
        finally:
            lock.release()

    def _save(self, root: Path) -> Path:
        files: dict[str, dict[str, torch.Tensor]] = {}
        saes_meta = {}
        state = {"rng_cpu": torch.get_rng_state()}
        for name, sae in self.saes.items():
            files[f"sae_{name}.safetensors"] = dict(sae.state_dict())
            tensors, opt_meta = ckpt.optimizer_to_tensors(self.optimizers[name],
                                                            sae.checkpoint_layout())
            files[f"optim_{name}.safetensors"] = tensors
            state[f"{name}.since_fired"] = self.since_fired[name]
            state[f"{name}.fire_counts"] = self.fire_counts[name]
            saes_meta[name] = {"config": sae.cfg.to_dict(), "optimizer": opt_meta,
                               "aux_on": self.aux_on[name], "device": str(sae.W_enc.device)}
        files["state.safetensors"] = state
        meta = ckpt.jsonable({
            "step": self.step,
            "tokens": self.tokens,
            "initialised": self.initialised,
            "train_config": self.cfg.to_dict(),
            "saes": saes_meta,
            "feed": self.feed.state_dict(),
            "history": self.history,
        })
        self.last_checkpoint = ckpt.write(root, self.step, meta, files,
                                          keep=self.cfg.keep_checkpoints, run_id=self.run_id)
        return self.last_checkpoint

    def load_checkpoint(self, path: Union[str, Path], _verified=None) -> None:
        """Restore the state saved by :meth:`save_checkpoint` into this trainer (every
        checksum verified first); this trainer continues that checkpoint's run."""
        path = Path(path)
        meta, files = _verified if _verified is not None else ckpt.read(path)
        trainer_file = path / ckpt.TRAINER
        if set(meta["saes"]) != set(self.saes):
            raise CorruptFileError(f"{trainer_file} holds dictionaries {sorted(meta['saes'])}, "
                                   f"this trainer has {sorted(self.saes)}", trainer_file)
        try:
            self._restore(path, meta, files)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CorruptFileError):
                raise
            raise CorruptFileError(f"{trainer_file} does not match the checkpoint files beside it "
                                   f"({type(exc).__name__}: {exc})", trainer_file) from None
        self.run_id = str(meta.get("run_id", ckpt.LEGACY_RUN))
        self.last_checkpoint = path

    def _restore(self, path: Path, meta: dict, files: dict) -> None:
        sfile = path / "state.safetensors"
        if "state.safetensors" not in files:
            raise CorruptFileError(f"{sfile} is not listed in {path / ckpt.TRAINER}", sfile)
        state = files["state.safetensors"]
        for name, sae in self.saes.items():
            wfile = f"sae_{name}.safetensors"
            _check_tensors(sae.state_dict(), files.get(wfile), path / wfile)
            m = meta["saes"][name]
            for key in ("since_fired", "fire_counts"):
                t = state.get(f"{name}.{key}")
                if t is None or tuple(t.shape) != (sae.n_latents,):
                    raise CorruptFileError(f"{sfile}: {name}.{key} is missing or not of shape "
                                           f"({sae.n_latents},)", sfile)
            sae.load_state_dict(files[wfile])
            ckpt.optimizer_from_tensors(self.optimizers[name], files[f"optim_{name}.safetensors"],
                                        m["optimizer"], path / f"optim_{name}.safetensors",
                                        sae.checkpoint_layout())
            for key, target in (("since_fired", self.since_fired), ("fire_counts", self.fire_counts)):
                target[name] = state[f"{name}.{key}"].to(sae.W_enc.device)
            self.aux_on[name] = bool(m["aux_on"])
        if "rng_cpu" in state:
            torch.set_rng_state(state["rng_cpu"])
        self.step = int(meta["step"])
        self.tokens = int(meta["tokens"])
        self.initialised = bool(meta["initialised"])
        self.history = list(meta.get("history", []))
        self.feed.load_state_dict(meta["feed"])

    @classmethod
    def resume(cls, checkpoint_dir: Union[str, Path], source, *, device=None,
               callback=None, **overrides) -> "SAETrainer":
        """A trainer rebuilt from the newest checkpoint under ``checkpoint_dir``; it continues
        that run and writes its checkpoints to ``checkpoint_dir``.

        ``overrides`` replace TrainConfig fields (e.g. ``steps`` to train longer,
        ``progress``); overriding one that changes results warns. Every file is verified,
        and every size checked against the tensors, before a dictionary is allocated."""
        root = Path(checkpoint_dir)
        path = ckpt.latest(root)
        if path is None:
            raise FileNotFoundError(f"no checkpoint under {root} (expected {root}/{ckpt.LATEST} "
                                    "and step_<NNNNNNNN> folders)")
        meta, files = ckpt.read(path)
        trainer_file = path / ckpt.TRAINER
        try:
            stored = TrainConfig.from_dict(dict(meta["train_config"], checkpoint_dir=str(root)))
            configs = {name: SAEConfig.from_dict(m["config"]) for name, m in meta["saes"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{trainer_file} holds no valid configuration "
                                   f"({type(exc).__name__}: {exc})", trainer_file) from None
        cfg = dataclasses.replace(stored, **overrides) if overrides else stored
        changed = sorted(k for k, v in _result_fields(cfg).items()
                         if _result_fields(stored)[k] != v)
        if changed:
            warnings.warn(f"resuming run {meta.get('run_id', ckpt.LEGACY_RUN)} from {path} with "
                          f"changed settings {changed}: the result differs from an "
                          "uninterrupted run", stacklevel=2)
        saes = {}
        for name, sc in configs.items():
            with torch.device("meta"):  # sizes checked against the files before allocating
                shape_only = build(sc, device="meta")
            wfile = f"sae_{name}.safetensors"
            _check_tensors(shape_only.state_dict(), files.get(wfile), path / wfile)
            saes[name] = build(sc, device=device or meta["saes"][name].get("device", "cpu"))
        trainer = cls(saes, source, cfg, callback=callback)
        trainer.load_checkpoint(path, _verified=(meta, files))
        return trainer


def _check_tensors(expected: dict, got: Optional[dict], file: Path) -> None:
    """``got`` (tensors read from ``file``) has exactly ``expected``'s names and shapes."""
    if got is None:
        raise CorruptFileError(f"{file} is not listed in the checkpoint's {ckpt.TRAINER}", file)
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise CorruptFileError(f"{file}: missing tensors {missing}, unexpected tensors {extra}",
                               file)
    for k, t in expected.items():
        if tuple(got[k].shape) != tuple(t.shape):
            raise CorruptFileError(f"{file}: tensor {k} has shape {tuple(got[k].shape)}, the "
                                   f"dictionary's config needs {tuple(t.shape)}", file)


def _projection(sae: SparseDictionary):
    """The gradient projection the normal step applies before the update (unit-norm decoders),
    for the one parameter it concerns."""
    def before_update(p: torch.Tensor) -> None:
        if p is getattr(sae, "W_dec", None):
            sae.project_decoder_grad()
    return before_update


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> dict:
    """FVU of a batch: one figure, plus one per output for (G, N, d) reconstructions (in
    float64, one output at a time: float64 copies of one output, not of all)."""
    num, den = [], []
    for xg, rg in zip(*((x, x_hat) if x.dim() == 3 else (x[None], x_hat[None]))):
        xd, rd = xg.double(), rg.double()
        num.append((xd - rd).pow(2).sum())
        den.append((xd - xd.mean(0, keepdim=True)).pow(2).sum())
    num, den = torch.stack(num), torch.stack(den)
    out = {"fvu": float(num.sum() / den.sum().clamp_min(1e-30))}
    if x.dim() == 3:
        out["fvu_per_output"] = (num / den.clamp_min(1e-30)).tolist()
    return out


def needed_hooks(saes) -> list[str]:
    """Every hook point the dictionaries read, in first-use order: pass it to
    :func:`pyinterp.sae.store.stream` / ``collect`` so one model pass feeds them all."""
    if isinstance(saes, SparseDictionary):
        saes = [saes]
    elif isinstance(saes, dict):
        saes = list(saes.values())
    out: list[str] = []
    for sae in saes:
        for h in sae.needed_hooks():
            if h not in out:
                out.append(h)
    return out


def train(saes, source, cfg: Optional[TrainConfig] = None, **kwargs) -> SAETrainer:
    """Build a :class:`SAETrainer` (``cfg`` or TrainConfig(**kwargs)), run it, return it."""
    if cfg is None:
        cfg = TrainConfig(**kwargs)
    elif kwargs:
        cfg = dataclasses.replace(cfg, **kwargs)
    trainer = SAETrainer(saes, source, cfg)
    trainer.run()
    return trainer
