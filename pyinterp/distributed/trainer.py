"""Data-parallel dictionary training on torch.distributed (gloo on CPU, NCCL on GPUs).

    # torchrun --nproc_per_node=4 train.py      (see docs/distributed.md)
    from pyinterp import distributed as D
    device = D.init()                                        # joins torchrun's group
    source = D.RankSource("acts/", global_batch=4096, streams=8)   # this rank's shards
    sae = TopKSAE(d_in, 16384, k=32, device=device, seed=0)
    trainer = D.DataParallelSAETrainer(sae, source, TrainConfig(steps=10_000,
                                       checkpoint_every=500, checkpoint_dir="runs/sae"))
    trainer.run()

It is :class:`pyinterp.sae.SAETrainer` with four collectives added, so every rank holds the
same dictionary after every step and a W-rank run equals a 1-rank run over the same global
batches (float summation order aside):

- gradients are averaged over ranks (one flat all-reduce per dictionary) right after backward,
  before the unit-decoder projection, clipping and Adam, so every rank takes the same step;
- the dead-latent counters and firing counts are made global (a latent fired if it fired on any
  rank; the token counter advances by the global batch), so AuxK sees the same dead set;
- the activation scale and b_dec are initialised from the gathered global sample;
- the non-finite check is agreed by all ranks, so a NaN stops every rank at the same step.

Checkpoints are written once, by rank 0 (atomically, with sha256 of every file, by the owner's
checkpoint code); they hold the position of every data stream, so they resume on any number of
ranks that divides ``streams`` (see :mod:`pyinterp.distributed.data`).

Not supported across ranks (a clear error): BatchTopK training (its selection is over the whole
batch) and dead-latent resampling of ReLU dictionaries (it draws from one rank's batch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
import torch.distributed as dist

from pyinterp._files import read_json
from pyinterp.distributed import _group as G
from pyinterp.sae import checkpoint as ckpt
from pyinterp.sae.modules import BatchTopKSAE
from pyinterp.sae.trainer import SAETrainer, TrainConfig


class _ListFeed:
    """Stands in for the trainer's feed while it initialises from the gathered batches."""

    def __init__(self, batches):
        self._it = iter(batches)

    def next(self):
        return next(self._it)


def _gather_batch(batch, group):
    if isinstance(batch, dict):
        return {k: G.all_gather_cat(v, group) for k, v in sorted(batch.items())}
    return G.all_gather_cat(batch, group)


class DataParallelSAETrainer(SAETrainer):
    """:class:`~pyinterp.sae.SAETrainer` across the ranks of ``group`` (default: the world).

    ``source`` is this rank's part of each global batch (a :class:`RankSource`, or any
    iterable giving every rank the same number of rows per batch, in rank order of the
    global batch). Without a process group it is exactly :class:`SAETrainer`.
    """

    def __init__(self, saes, source, cfg: TrainConfig, *, callback=None, group=None,
                 fresh: bool = False):
        super().__init__(saes, source, cfg, callback=callback, fresh=fresh)
        self.group = group
        self.world, self.rank = G.world_size(group), G.rank(group)
        self._rank0_only = False
        if self.world > 1:
            if cfg.resample_every:
                raise ValueError("cfg.resample_every: dead-latent resampling is not supported "
                                 "with several ranks (it draws from one rank's batch); use None")
            for name, sae in self.saes.items():
                if isinstance(sae, BatchTopKSAE):
                    raise ValueError(f"saes[{name!r}] is a BatchTopK dictionary: its top-k is over "
                                     "the whole batch, which data-parallel ranks do not hold; "
                                     "train it on one rank, or use TopK")
        self._broadcast_state()

    # ------------------------------------------------------------------ collectives
    @torch.no_grad()
    def _broadcast_state(self) -> None:
        """Every rank starts from rank 0's dictionaries (whatever seeds they were built with)."""
        if self.world == 1:
            return
        for sae in self.saes.values():
            for t in sae.state_dict().values():
                G.broadcast_(t, 0, self.group)

    @torch.no_grad()
    def _after_backward(self, name, sae) -> None:
        params = [p for p in sae.parameters() if p.requires_grad]
        if self.world == 1 or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        G.all_reduce_(flat, group=self.group)
        flat.div_(self.world)
        off = 0
        for p in params:
            n = p.numel()
            p.grad = flat[off:off + n].view_as(p).clone()
            off += n

    def _check_finite(self, step: int, x_by_name=None) -> None:
        if self.world > 1 and not self._rank0_only:
            names = list(self._bad)
            flags = torch.stack([self._bad[n].to(torch.int64).cpu() for n in names])
            flags = flags.to(G.comm_device(self.group))
            G.all_reduce_(flags, op=dist.ReduceOp.MAX, group=self.group)
            for n, f in zip(names, flags.tolist()):
                self._bad[n] = torch.tensor(bool(f), device=self._bad[n].device)
        super()._check_finite(step, x_by_name)

    @torch.no_grad()
    def initialise(self) -> None:
        if self.initialised or self.world == 1 or not (self.cfg.normalize_activations or
                                                       self.cfg.b_dec_init):
            super().initialise()
            self._broadcast_state()
            return
        batches = [_gather_batch(self.feed.next(), self.group) for _ in range(self.cfg.init_batches)]
        real, self.feed = self.feed, _ListFeed(batches)
        try:
            super().initialise()
        finally:
            self.feed = real
        self._broadcast_state()

    def train_step(self, batch):
        before = {n: (self.since_fired[n].clone(), self.fire_counts[n].clone()) for n in self.saes}
        tokens0 = self.tokens
        out = super().train_step(batch)
        if self.world == 1:
            return out
        local = self.tokens - tokens0
        global_rows = local * self.world
        self.tokens = tokens0 + global_rows
        names = list(self.saes)
        # one collective: [fired flags of every dictionary | new firing counts of every one]
        fired = [(self.since_fired[n] == 0).to(torch.int64) for n in names]
        counts = [self.fire_counts[n] - before[n][1] for n in names]
        buf = torch.cat(fired + counts)
        nf = sum(f.numel() for f in fired)
        G.all_reduce_(buf, group=self.group)
        off = 0
        for n, f in zip(names, fired):
            hit = buf[off:off + f.numel()] > 0
            off += f.numel()
            self.since_fired[n] = torch.where(hit, torch.zeros_like(before[n][0]),
                                              before[n][0] + global_rows)
        for n, c in zip(names, counts):
            self.fire_counts[n] = before[n][1] + buf[off:off + c.numel()]
            off += c.numel()
        assert off == buf.numel() and nf <= off
        if self.step % self.cfg.aux_check_every == 0:
            for n in names:
                self.aux_on[n] = bool((self.since_fired[n] >= self.cfg.dead_window_tokens).any())
        return out

    # ------------------------------------------------------------------ checkpoints
    def _writes_checkpoints(self) -> bool:
        return self.rank == 0  # rank 0 alone locks and writes the checkpoint directory

    def save_checkpoint(self, root: Optional[Union[str, Path]] = None) -> Path:
        """Collective: every rank calls it; rank 0 alone writes (atomically)."""
        if self.world == 1:
            return super().save_checkpoint(root)
        self._check_finite(self.step)
        sync = getattr(self.feed.source, "sync_state", None)
        if sync is not None:
            sync()
        path = None
        if self.rank == 0:
            self._rank0_only = True
            try:
                path = super().save_checkpoint(root)
            finally:
                self._rank0_only = False
        G.barrier(self.group)
        if path is None:
            path = Path(root or self.cfg.checkpoint_dir) / f"step_{self.step:08d}"
            self.last_checkpoint = path
        return path

    @classmethod
    def resume(cls, checkpoint_dir, source, *, device=None, callback=None,
               **overrides) -> "DataParallelSAETrainer":
        """Rebuild from the newest checkpoint on any number of ranks (each rank reads it;
        the default process group).

        ``device`` defaults to this rank's device (``cuda:LOCAL_RANK`` for a checkpoint saved
        from CUDA), not the device rank 0 saved from."""
        if device is None:
            path = ckpt.latest(Path(checkpoint_dir))
            if path is not None:
                meta = read_json(path / ckpt.TRAINER, "checkpoint state")
                saved = {m.get("device", "cpu") for m in meta.get("saes", {}).values()} or {"cpu"}
                device = G.rank_device(torch.device(sorted(saved)[0]).type)
        return super().resume(checkpoint_dir, source, device=device, callback=callback,
                              **overrides)
