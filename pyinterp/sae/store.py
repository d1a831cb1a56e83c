"""Activations for dictionary training: collect from a model's hook points (or any
callable), shuffle, and stream to and from safetensors shards on disk.

    from pyinterp.sae.store import collect, ActivationStore
    collect("acts/", model, token_batches, hook_names=["blocks.0.hook_resid_post"],
            shard_rows=1 << 16, max_rows=10_000_000)        # resumable
    store = ActivationStore("acts/", batch_size=4096, seed=0)  # endless, shuffled, resumable
    batch = next(iter(store))      # (4096, d_in), or a dict hook -> tensor for several hooks

Shards hold whole producer batches (so collection resumes exactly where it stopped), rows
shuffled within the shard; reading shuffles the shard order per epoch and the rows of
``mix_shards`` shards at a time, so the data can exceed memory. ``manifest.json`` lists each
shard's rows, size and sha256; a missing, truncated or corrupt shard raises an error naming
the file. See docs/decisions/sae-activation-store.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import torch

from pyinterp._files import (
    CorruptFileError,
    atomic_save_tensors,
    atomic_write_json,
    inside,
    load_tensors,
    read_json,
    read_verified,
    sha256_file,
)
from pyinterp.sae.config import dtype_name, parse_dtype

MANIFEST = "manifest.json"
_END = object()
FORMAT = "pyinterp-activations-1"


# ----------------------------------------------------------------------------- sources
def activation_fn(model, hook_names: Optional[Sequence[str]] = None) -> Callable:
    """A function ``model_input -> {hook_name: (N, d)}`` for a model or a plain callable.

    ``model`` with ``run_with_cache(input, names_filter=[...])`` (pyinterp.models.Transformer,
    the adapters, TransformerLens): the cached activations of ``hook_names``, leading dims
    flattened; the forward stops after the last block a hook needs (``stop_at_layer``). Any
    other callable: its output, a tensor (stored under ``hook_names[0]`` or "x") or a dict.
    """
    from pyinterp.models.hooks import stop_layer

    names = list(hook_names) if hook_names is not None else None
    stop = stop_layer(model, names) if names and hasattr(model, "run_with_cache") else None
    stop_kw = {} if stop is None else {"stop_at_layer": stop}

    def fn(batch) -> dict[str, torch.Tensor]:
        if hasattr(model, "run_with_cache"):
            if not names:
                raise ValueError("hook_names is required to collect from a model's hook points")
            with torch.no_grad():
                _, cache = model.run_with_cache(batch, names_filter=names, **stop_kw)
            missing = [n for n in names if n not in cache]
            if missing:
                raise KeyError(f"the model produced no activations for hooks {missing}")
            out = {n: cache[n] for n in names}
        else:
            with torch.no_grad():
                res = model(batch)
            if isinstance(res, torch.Tensor):
                out = {(names[0] if names else "x"): res}
            elif isinstance(res, dict):
                out = {n: res[n] for n in (names or res)}
            else:
                raise TypeError(f"the activation callable must return a tensor or a dict of "
                                f"tensors, got {type(res).__name__}")
        flat = {}
        for n, t in out.items():
            if not isinstance(t, torch.Tensor) or t.dim() < 1:
                raise TypeError(f"activations for {n!r} must be a tensor with a last (d) dim")
            flat[n] = t.detach().reshape(-1, t.shape[-1])
        rows = {t.shape[0] for t in flat.values()}
        if len(rows) != 1:
            raise ValueError(f"hooks produced different row counts {sorted(rows)}; every hook "
                             "must give one row per token")
        return flat

    return fn


def _as_dict(batch, name="x") -> dict[str, torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return {name: batch.reshape(-1, batch.shape[-1])}
    if isinstance(batch, dict):
        return {k: v.reshape(-1, v.shape[-1]) for k, v in batch.items()}
    raise TypeError(f"an activation batch must be a tensor or a dict of tensors, got {type(batch).__name__}")


# ----------------------------------------------------------------------------- writing
def _manifest_path(root: Path) -> Path:
    return Path(root) / MANIFEST


def _count(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def read_manifest(root: Union[str, Path]) -> dict:
    """The manifest of a store, its checksum (when it has one) and every field checked:
    hooks with their width, each shard's file (inside ``root``), rows, bytes and sha256."""
    root = Path(root)
    path = _manifest_path(root)
    m = read_json(path, "activation manifest")
    for field in ("format", "hooks", "shards"):
        if field not in m:
            raise CorruptFileError(f"{path} is missing the field {field!r}")
    if m["format"] != FORMAT:
        raise CorruptFileError(f"{path}: unknown format {m['format']!r}")
    if not isinstance(m["hooks"], dict) or not all(
            isinstance(h, dict) and _count(h.get("d"), 1) for h in m["hooks"].values()):
        raise CorruptFileError(f"{path}: 'hooks' must map hook names to {{'d': width >= 1, ...}}",
                               path)
    if not isinstance(m["shards"], list):
        raise CorruptFileError(f"{path}: 'shards' must be a list", path)
    for j, s in enumerate(m["shards"]):
        ok = (isinstance(s, dict) and _count(s.get("rows")) and _count(s.get("bytes", 0))
              and isinstance(s.get("sha256"), str) and len(s["sha256"]) == 64)
        if not ok:
            raise CorruptFileError(f"{path}: shard {j} must have 'file', 'rows', 'bytes' and a "
                                   f"64-digit 'sha256', got {s!r}"[:300], path)
        inside(root, s.get("file"), f"shard {j} file", path)
    for field in ("total_rows", "inputs_consumed"):
        if field in m and not _count(m[field]):
            raise CorruptFileError(f"{path}: {field} must be an int >= 0, got {m[field]!r}", path)
    if "total_rows" in m and m["total_rows"] != sum(s["rows"] for s in m["shards"]):
        raise CorruptFileError(f"{path}: total_rows {m['total_rows']} is not the sum of the "
                               "shards' rows", path)
    return m


def collect(out_dir: Union[str, Path], source, inputs: Optional[Iterable] = None, *,
            hook_names: Optional[Sequence[str]] = None, shard_rows: int = 1 << 16,
            max_rows: Optional[int] = None, seed: int = 0, dtype=None, device="cpu",
            resume: bool = True, progress: bool = True) -> dict:
    """Write activations to safetensors shards under ``out_dir``; returns the manifest.

    source: a model (``run_with_cache``) or a callable, applied to each item of ``inputs``
    (token batches); or, with ``inputs=None``, an iterable of activation batches (tensors or
    dicts hook -> tensor). A shard closes once it holds >= ``shard_rows`` rows; its rows are
    shuffled with a generator seeded by (seed, shard index). Stops after ``max_rows`` rows
    (whole batches) or when the inputs end. With ``resume`` an unfinished collection
    continues after the last complete shard, skipping the inputs already used (without
    running the model on them). ``dtype`` converts the stored activations (e.g. float16).
    """
    from pyinterp._progress import progress as progress_bar

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    if not isinstance(shard_rows, int) or shard_rows < 1:
        raise ValueError(f"shard_rows must be a positive int, got {shard_rows!r}")
    store_dtype = parse_dtype(dtype) if dtype is not None else None
    manifest = None
    if resume and _manifest_path(root).exists():
        manifest = read_manifest(root)
        if manifest.get("complete"):
            return manifest
    if manifest is None:
        manifest = {"format": FORMAT, "hooks": {}, "shards": [], "total_rows": 0,
                    "inputs_consumed": 0, "seed": seed, "complete": False}
    fn = activation_fn(source, hook_names) if inputs is not None else None
    it = iter(inputs if inputs is not None else source)
    for n in range(manifest["inputs_consumed"]):  # resume: skip what complete shards hold
        if next(it, _END) is _END:
            raise ValueError(f"the inputs ended after {n} items, but the unfinished collection in "
                             f"{root} already holds {manifest['inputs_consumed']}: resume with "
                             "the same inputs, or pass resume=False")
    pending: dict[str, list] = {}
    pending_rows, pending_inputs = 0, 0
    bar = progress_bar(total=max_rows, initial=manifest["total_rows"], disable=not progress,
               desc="collecting activations", unit="row")

    def flush():
        nonlocal pending, pending_rows, pending_inputs
        if pending_rows == 0:
            return
        idx = len(manifest["shards"])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + idx)
        perm = torch.randperm(pending_rows, generator=gen)
        tensors = {n: torch.cat(chunks)[perm] for n, chunks in pending.items()}
        fname = f"shard_{idx:05d}.safetensors"
        atomic_save_tensors(root / fname, tensors)
        manifest["shards"].append({"file": fname, "rows": pending_rows,
                                   "bytes": (root / fname).stat().st_size,
                                   "sha256": sha256_file(root / fname)})
        manifest["total_rows"] += pending_rows
        manifest["inputs_consumed"] += pending_inputs
        atomic_write_json(_manifest_path(root), manifest, checksum=True)
        pending, pending_rows, pending_inputs = {}, 0, 0

    try:
        while max_rows is None or manifest["total_rows"] + pending_rows < max_rows:
            try:
                item = next(it)
            except StopIteration:
                break
            acts = fn(item) if fn is not None else _as_dict(item, (hook_names or ["x"])[0])
            for n, t in acts.items():
                t = t.to(device)
                if store_dtype is not None:
                    t = t.to(store_dtype)
                info = manifest["hooks"].setdefault(n, {"d": t.shape[-1], "dtype": dtype_name(t.dtype)})
                if info["d"] != t.shape[-1] or info["dtype"] != dtype_name(t.dtype):
                    raise ValueError(f"hook {n!r}: activations of shape (.., {t.shape[-1]}) "
                                     f"{t.dtype} do not match the store's (.., {info['d']}) "
                                     f"{info['dtype']}")
                pending.setdefault(n, []).append(t.contiguous())
            if set(acts) != set(manifest["hooks"]):
                raise ValueError(f"batch hooks {sorted(acts)} differ from the store's "
                                 f"{sorted(manifest['hooks'])}")
            rows = next(iter(acts.values())).shape[0]
            pending_rows += rows
            pending_inputs += 1
            bar.update(rows)
            if pending_rows >= shard_rows:
                flush()
        flush()
    finally:
        bar.close()
    manifest["complete"] = True
    atomic_write_json(_manifest_path(root), manifest, checksum=True)
    return manifest


# ----------------------------------------------------------------------------- reading
class ActivationStore:
    """Shuffled, endless (or ``epochs``-long) batches from shards on disk or tensors in memory.

    Yields ``(batch_size, d)`` tensors when one hook is selected, else dicts hook -> tensor
    (rows aligned across hooks). ``state_dict()``/``load_state_dict()`` give exact resume.
    Memory: ``mix_shards`` shards at a time.
    """

    def __init__(self, path: Optional[Union[str, Path]] = None, batch_size: int = 4096, *,
                 hook_names: Optional[Sequence[str]] = None, seed: int = 0, shuffle: bool = True,
                 mix_shards: int = 2, epochs: Optional[int] = None, device="cpu", dtype=None,
                 verify: bool = True, return_dict: Optional[bool] = None,
                 _tensors: Optional[dict] = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if mix_shards < 1:
            raise ValueError(f"mix_shards must be >= 1, got {mix_shards}")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.mix_shards, self.epochs, self.device, self.verify = mix_shards, epochs, device, verify
        self.dtype = parse_dtype(dtype) if dtype is not None else None
        if _tensors is not None:
            self.root = None
            self._memory = _tensors
            hooks = {n: {"d": t.shape[-1]} for n, t in _tensors.items()}
            self.shards = [{"rows": next(iter(_tensors.values())).shape[0]}]
        else:
            if path is None:
                raise ValueError("path is required (or use ActivationStore.from_tensors)")
            self.root = Path(path)
            m = read_manifest(self.root)
            if not m.get("complete"):
                raise CorruptFileError(f"{_manifest_path(self.root)}: the collection is incomplete "
                                       "(run collect() again to finish it)")
            hooks, self.shards = m["hooks"], m["shards"]
            self._memory = None
        if not self.shards or sum(s["rows"] for s in self.shards) == 0:
            raise ValueError("the activation store is empty")
        self.hook_names = list(hook_names) if hook_names is not None else sorted(hooks)
        unknown = [n for n in self.hook_names if n not in hooks]
        if unknown:
            raise KeyError(f"hooks {unknown} are not in the store (it has {sorted(hooks)})")
        self.d = {n: hooks[n]["d"] for n in self.hook_names}
        self.return_dict = len(self.hook_names) > 1 if return_dict is None else return_dict
        self.total_rows = sum(s["rows"] for s in self.shards)
        self._pos = (0, 0, 0)  # epoch, group, row offset in the group's permutation
        self._cache_key, self._cache = None, None

    @classmethod
    def from_tensors(cls, data: Union[torch.Tensor, dict], batch_size: int = 4096, **kwargs):
        """A store over activations already in memory ((N, d) tensor or dict hook -> (N, d))."""
        tensors = _as_dict(data)
        rows = {t.shape[0] for t in tensors.values()}
        if len(rows) != 1:
            raise ValueError(f"all hooks need the same number of rows, got {sorted(rows)}")
        kwargs.setdefault("return_dict", isinstance(data, dict) and len(tensors) > 1)
        return cls(None, batch_size, _tensors=tensors, **kwargs)

    # -- position and state
    def state_dict(self) -> dict:
        e, g, o = self._pos
        return {"epoch": e, "group": g, "offset": o, "seed": self.seed,
                "batch_size": self.batch_size, "total_rows": self.total_rows}

    def load_state_dict(self, state: dict) -> None:
        for field in ("epoch", "group", "offset"):
            if field not in state:
                raise ValueError(f"activation store state is missing {field!r}")
        if state.get("total_rows", self.total_rows) != self.total_rows:
            raise ValueError(f"the state was saved for a store of {state['total_rows']} rows, "
                             f"this one has {self.total_rows}")
        self._pos = (int(state["epoch"]), int(state["group"]), int(state["offset"]))

    # -- shards and groups
    def _order(self, epoch: int) -> list[int]:
        n = len(self.shards)
        if not self.shuffle:
            return list(range(n))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=gen).tolist()

    def _n_groups(self) -> int:
        return -(-len(self.shards) // self.mix_shards)

    def _read_shard(self, i: int) -> dict[str, torch.Tensor]:
        if self._memory is not None:
            return self._memory
        info = self.shards[i]
        listing = _manifest_path(self.root)
        f = inside(self.root, info["file"], "activation shard", listing)
        if not f.is_file():
            raise CorruptFileError(f"activation shard {f} is missing (listed in {listing})")
        size = f.stat().st_size
        if "bytes" in info and size != info["bytes"]:
            raise CorruptFileError(f"activation shard {f} is truncated or corrupt: {size} bytes, "
                                   f"the manifest records {info['bytes']}")
        data = (read_verified(f, info["sha256"], "activation shard", listing) if self.verify
                else None)
        t = load_tensors(f, "activation shard", data=data)
        missing = [n for n in self.hook_names if n not in t]
        if missing:
            raise CorruptFileError(f"activation shard {f} is missing the hooks {missing}")
        for n in self.hook_names:
            if t[n].shape != (info["rows"], self.d[n]):
                raise CorruptFileError(f"activation shard {f}: {n} has shape {tuple(t[n].shape)}, "
                                       f"expected ({info['rows']}, {self.d[n]})")
        return t

    def _group(self, epoch: int, group: int) -> dict[str, torch.Tensor]:
        key = (epoch, group)
        if self._cache_key == key:
            return self._cache
        self._cache = None  # release the previous group before loading the next
        order = self._order(epoch)
        ids = order[group * self.mix_shards:(group + 1) * self.mix_shards]
        parts = [self._read_shard(i) for i in ids]
        data = {n: torch.cat([p[n] for p in parts]) if len(parts) > 1 else parts[0][n]
                for n in self.hook_names}
        rows = next(iter(data.values())).shape[0]
        if self.shuffle:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + group)
            perm = torch.randperm(rows, generator=gen)
            data = {n: t[perm] for n, t in data.items()}
        self._cache_key, self._cache = key, data
        return data

    def _next_rows(self, need: int):
        """Up to ``need`` rows from the current position; advances it. None at the end."""
        e, g, o = self._pos
        if self.epochs is not None and e >= self.epochs:
            return None
        data = self._group(e, g)
        rows = next(iter(data.values())).shape[0]
        take = min(need, rows - o)
        chunk = {n: t[o:o + take] for n, t in data.items()}
        o += take
        if o >= rows:
            g, o = g + 1, 0
            if g >= self._n_groups():
                e, g = e + 1, 0
        self._pos = (e, g, o)
        return chunk

    def next_batch(self):
        """The next batch (raises StopIteration after the last epoch)."""
        parts, have = [], 0
        while have < self.batch_size:
            chunk = self._next_rows(self.batch_size - have)
            if chunk is None:
                break
            parts.append(chunk)
            have += next(iter(chunk.values())).shape[0]
        if have < self.batch_size:  # drop the incomplete last batch of the last epoch
            raise StopIteration
        out = {}
        for n in self.hook_names:
            t = torch.cat([p[n] for p in parts]) if len(parts) > 1 else parts[0][n]
            t = t.to(self.device)
            out[n] = t.to(self.dtype) if self.dtype is not None else t
        return out if self.return_dict else out[self.hook_names[0]]

    def __iter__(self) -> Iterator:
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless store (epochs=None) has no length")
        return (self.total_rows * self.epochs) // self.batch_size


def stream(model, inputs: Iterable, hook_names: Optional[Sequence[str]] = None, *,
           batch_size: int = 4096, buffer_rows: int = 1 << 16, seed: int = 0,
           device="cpu") -> Iterator:
    """Shuffled batches straight from a model, through an in-memory mixing buffer (no disk).

    Fills a buffer of ``buffer_rows`` rows, shuffles it, yields half of it as batches, and
    refills. Not resumable (use :func:`collect` + :class:`ActivationStore` for that).
    """
    fn = activation_fn(model, hook_names)
    gen = torch.Generator().manual_seed(seed)
    buf: Optional[dict] = None
    single = None
    for item in inputs:
        acts = {n: t.to(device) for n, t in fn(item).items()}
        single = len(acts) == 1 if single is None else single
        buf = acts if buf is None else {n: torch.cat([buf[n], acts[n]]) for n in acts}
        rows = next(iter(buf.values())).shape[0]
        if rows >= buffer_rows:
            perm = torch.randperm(rows, generator=gen)
            buf = {n: t[perm] for n, t in buf.items()}
            out_rows = (rows // 2 // batch_size) * batch_size
            for s in range(0, out_rows, batch_size):
                b = {n: t[s:s + batch_size] for n, t in buf.items()}
                yield next(iter(b.values())) if single else b
            buf = {n: t[out_rows:] for n, t in buf.items()}
    if buf is not None:
        rows = next(iter(buf.values())).shape[0]
        perm = torch.randperm(rows, generator=gen)
        buf = {n: t[perm] for n, t in buf.items()}
        for s in range(0, rows - batch_size + 1, batch_size):
            b = {n: t[s:s + batch_size] for n, t in buf.items()}
            yield next(iter(b.values())) if single else b
