"""Activation data for data-parallel training: each rank reads its own shards.

The global data order does not depend on how many ranks there are. An activation store's
shards are dealt to ``streams`` fixed logical streams (shard i -> stream i % streams); each
stream is an :class:`~pyinterp.sae.store.ActivationStore` over its shards only, with its own
shuffle seed, giving micro-batches of ``global_batch // streams`` rows. Global batch t is the
concatenation of every stream's t-th micro-batch in stream order. Rank r of W owns the
contiguous streams ``[r*S/W, (r+1)*S/W)`` (W must divide S), so it opens only the shards of
those streams, and the concatenation of the ranks' local batches in rank order *is* the global
batch. A 1-rank run and a W-rank run therefore train on the same rows in the same order, and a
checkpoint (the position of every stream) resumes on any W that divides S.

Collection: :func:`collect` runs the model on every W-th input per rank, writes a resumable
per-rank store under ``<out>/rank_<r>/`` and, on rank 0, a top-level manifest listing all
shards (with their sha256) so :class:`~pyinterp.sae.store.ActivationStore` and
:class:`RankSource` read them as one store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

from pyinterp._files import CorruptFileError, atomic_write_json, read_json
from pyinterp.distributed import _group as G
from pyinterp.sae import store as _store
from pyinterp.sae.store import MANIFEST, ActivationStore, read_manifest

DIST_FORMAT = "pyinterp-distributed-collection-1"
DIST_INFO = "distributed.json"


class ShardSubsetStore(ActivationStore):
    """An :class:`ActivationStore` that reads only the shards ``shard_ids`` of the store at
    ``path`` (a stream of the data-parallel order). Same batches, state and checks."""

    def __init__(self, path, batch_size: int, shard_ids: Sequence[int], **kwargs):
        super().__init__(path, batch_size, **kwargs)
        ids = list(shard_ids)
        bad = [i for i in ids if not 0 <= i < len(self.shards)]
        if bad or not ids:
            raise ValueError(f"shard_ids must be a non-empty list of shard numbers in "
                             f"[0, {len(self.shards)}), got {ids}")
        self.shard_ids = ids
        self.shards = [self.shards[i] for i in ids]
        self.total_rows = sum(s["rows"] for s in self.shards)
        if self.total_rows == 0:
            raise ValueError(f"shards {ids} of {path} hold no rows")


def stream_shards(n_shards: int, streams: int) -> list[list[int]]:
    """Shard numbers of each stream: shard i goes to stream i % streams."""
    return [list(range(s, n_shards, streams)) for s in range(streams)]


def rank_streams(streams: int, world: int, rank: int) -> range:
    """The contiguous streams rank ``rank`` of ``world`` owns."""
    if streams % world:
        raise ValueError(f"the number of ranks ({world}) must divide the number of data "
                         f"streams ({streams}); choose streams as a multiple of every world "
                         "size you will run on (e.g. 8)")
    per = streams // world
    return range(rank * per, (rank + 1) * per)


class RankSource:
    """This rank's part of the global batches of the store at ``path`` (see module doc).

    global_batch: rows per optimiser step over all ranks (divisible by ``streams``).
    Yields (global_batch / W, d) tensors (or dicts hook -> tensor). ``state_dict()`` returns
    the position of *every* stream (it gathers them from all ranks: call it on every rank,
    or call :meth:`sync_state` on every rank first), so a checkpoint resumes on any world size
    that divides ``streams``.
    """

    def __init__(self, path: Union[str, Path], global_batch: int, *, streams: int,
                 hook_names: Optional[Sequence[str]] = None, seed: int = 0,
                 mix_shards: int = 1, epochs: Optional[int] = None, device="cpu", dtype=None,
                 verify: bool = True, group=None):
        if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
            raise ValueError(f"streams must be a positive int, got {streams!r}")
        if isinstance(global_batch, bool) or not isinstance(global_batch, int) or \
                global_batch < 1 or global_batch % streams:
            raise ValueError(f"global_batch must be a positive multiple of streams={streams}, "
                             f"got {global_batch!r}")
        self.path, self.streams, self.group = Path(path), streams, group
        self.global_batch = global_batch
        self.world, self.rank = G.world_size(group), G.rank(group)
        self.mine = rank_streams(streams, self.world, self.rank)
        n_shards = len(read_manifest(self.path)["shards"])
        if n_shards < streams:
            raise ValueError(f"the store {self.path} has {n_shards} shards, fewer than "
                             f"streams={streams}: collect with smaller shard_rows")
        ids = stream_shards(n_shards, streams)
        micro = global_batch // streams
        self.stores = {s: ShardSubsetStore(self.path, micro, ids[s], hook_names=hook_names,
                                           seed=seed * 1_000_003 + s, mix_shards=mix_shards,
                                           epochs=epochs, device=device, dtype=dtype,
                                           verify=verify)
                       for s in self.mine}
        self._synced: Optional[dict] = None

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world

    def next_batch(self):
        parts = [self.stores[s].next_batch() for s in self.mine]
        self._synced = None
        if isinstance(parts[0], dict):
            return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def __iter__(self):
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    # -- state: positions of all streams, gathered as int64 tensors (no pickling)
    def _local_positions(self) -> torch.Tensor:
        pos = torch.full((self.streams, 3), -1, dtype=torch.int64)
        for s in self.mine:
            st = self.stores[s].state_dict()
            pos[s] = torch.tensor([st["epoch"], st["group"], st["offset"]])
        return pos

    def sync_state(self) -> dict:
        """Gather every stream's position (a collective: all ranks call it)."""
        pos = self._local_positions()
        if self.world > 1:
            dev = G.comm_device(self.group)
            pos = G.all_gather_cat(pos.unsqueeze(0).to(dev), self.group).max(0).values.cpu()  # each stream is owned by exactly one rank
        self._synced = self._state_from(pos)
        return self._synced

    def _state_from(self, pos: torch.Tensor) -> dict:
        return {"format": "pyinterp-rank-source-1", "streams": self.streams,
                "global_batch": self.global_batch,
                "positions": [{"epoch": int(e), "group": int(g), "offset": int(o)}
                              for e, g, o in pos.tolist()]}

    def state_dict(self) -> dict:
        if self._synced is not None:
            return self._synced
        if self.world > 1:
            raise RuntimeError("RankSource.state_dict() needs the positions of all ranks: call "
                               "sync_state() on every rank first")
        return self.sync_state()

    def load_state_dict(self, state: dict) -> None:
        for key in ("streams", "global_batch", "positions"):
            if key not in state:
                raise ValueError(f"data-parallel source state is missing {key!r}")
        if state["streams"] != self.streams or state["global_batch"] != self.global_batch:
            raise ValueError(
                f"the checkpoint was written with streams={state['streams']}, global_batch="
                f"{state['global_batch']}; this source has streams={self.streams}, "
                f"global_batch={self.global_batch} (they must match to continue the same data "
                "order)")
        for s in self.mine:
            p = state["positions"][s]
            self.stores[s].load_state_dict(dict(p, total_rows=self.stores[s].total_rows))
        self._synced = None


# ----------------------------------------------------------------------------- collection
def collect(out_dir: Union[str, Path], source, inputs: Iterable, *,
            hook_names: Optional[Sequence[str]] = None, shard_rows: int = 1 << 16,
            max_rows_per_rank: Optional[int] = None, seed: int = 0, dtype=None, device="cpu",
            progress: bool = True, group=None) -> dict:
    """Data-parallel activation collection; every rank calls it with the same ``inputs``.

    Rank r runs ``source`` (a model with ``run_with_cache`` or a callable, see
    :func:`pyinterp.sae.store.collect`) on inputs r, r+W, r+2W, ... and writes shards under
    ``<out_dir>/rank_<r>/`` (resumable per rank). After a barrier rank 0 writes
    ``<out_dir>/manifest.json`` listing every rank's shards (interleaved by rank), so the
    directory reads as one store. Resuming needs the same world size (recorded in
    ``distributed.json``). Returns the merged manifest (on every rank).
    """
    root = Path(out_dir)
    world, r = G.world_size(group), G.rank(group)
    info_path = root / DIST_INFO
    if r == 0:
        root.mkdir(parents=True, exist_ok=True)
        if info_path.exists():
            info = read_json(info_path, "distributed collection info")
            if info.get("world_size") != world:
                raise ValueError(f"{root} was collected by {info.get('world_size')} ranks; resume "
                                 f"it with the same number of ranks, not {world}")
        else:
            atomic_write_json(info_path, {"format": DIST_FORMAT, "world_size": world})
    G.barrier(group)
    mine = (item for i, item in enumerate(inputs) if i % world == r)
    _store.collect(root / f"rank_{r:03d}", source, mine, hook_names=hook_names,
                   shard_rows=shard_rows, max_rows=max_rows_per_rank, seed=seed * 1_000_003 + r,
                   dtype=dtype, device=device, resume=True, progress=progress and r == 0)
    G.barrier(group)
    if r == 0:
        merge_manifests(root, world)
    G.barrier(group)
    return read_manifest(root)


def merge_manifests(root: Union[str, Path], world: int) -> dict:
    """Write ``root/manifest.json`` listing the shards of ``root/rank_*/`` (round-robin)."""
    root = Path(root)
    parts = [read_manifest(root / f"rank_{r:03d}") for r in range(world)]
    for r, m in enumerate(parts):
        if not m.get("complete"):
            raise CorruptFileError(f"{root / f'rank_{r:03d}' / MANIFEST}: rank {r}'s collection "
                                   "is incomplete")
    hooks = parts[0]["hooks"]
    for r, m in enumerate(parts):
        if m["hooks"] != hooks:
            raise ValueError(f"rank {r} collected hooks {m['hooks']}, rank 0 {hooks}")
    shards = []
    for i in range(max(len(m["shards"]) for m in parts)):
        for r, m in enumerate(parts):
            if i < len(m["shards"]):
                s = dict(m["shards"][i])
                s["file"] = f"rank_{r:03d}/{s['file']}"
                shards.append(s)
    merged = {"format": _store.FORMAT, "hooks": hooks, "shards": shards,
              "total_rows": sum(s["rows"] for s in shards),
              "inputs_consumed": sum(m["inputs_consumed"] for m in parts),
              "seed": parts[0].get("seed", 0), "complete": True, "world_size": world}
    atomic_write_json(root / MANIFEST, merged, checksum=True)
    return merged
