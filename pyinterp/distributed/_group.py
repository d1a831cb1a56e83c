"""Process-group helpers: start from torchrun's environment, rank/world queries, the device
a rank computes on. Everything else in pyinterp.distributed calls only these and the
collectives of :mod:`torch.distributed` (no home-made scheduler or transport)."""
from __future__ import annotations

import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank(group=None) -> int:
    return dist.get_rank(group) if is_initialized() else 0


def world_size(group=None) -> int:
    return dist.get_world_size(group) if is_initialized() else 1


def local_rank() -> int:
    """The rank on this machine (torchrun's LOCAL_RANK; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def default_backend(device: Optional[str] = None) -> str:
    """NCCL when this process computes on CUDA, gloo otherwise."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: Optional[str] = None) -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` when CUDA is used, else CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", local_rank())
    return d


def init(backend: Optional[str] = None, device: Optional[str] = None,
         timeout_s: float = 1800.0) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    A no-op when already initialised; a single process without torchrun's variables runs
    as world size 1 (no group). Returns this rank's device (and makes it current on CUDA).
    """
    dev = rank_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if is_initialized():
        return dev
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1 and \
            "MASTER_ADDR" not in os.environ:
        return dev
    backend = backend or default_backend(str(dev))
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("backend 'nccl' needs CUDA tensors; use 'gloo' on CPU")
    kwargs = dict(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    if backend == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(**kwargs)
    return dev


def comm_device(group=None) -> torch.device:
    """Where small bookkeeping tensors must live for collectives: the current CUDA device
    under NCCL (it cannot reduce host tensors), the CPU otherwise."""
    if is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(group=None) -> None:
    if is_initialized():
        dist.barrier(group)


def all_reduce_(t: torch.Tensor, op=None, group=None) -> torch.Tensor:
    """In-place all-reduce (sum by default); identity without a process group."""
    if is_initialized() and world_size(group) > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=group)
    return t


def all_gather_cat(t: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate equal-shaped tensors of every rank along dim 0, in rank order."""
    w = world_size(group)
    if w == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(w)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts)


def broadcast_(t: torch.Tensor, src: int = 0, group=None) -> torch.Tensor:
    if is_initialized() and world_size(group) > 1:
        dist.broadcast(t, src=src, group=group)
    return t
