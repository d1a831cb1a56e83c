"""Run a function on several gloo ranks (torch.multiprocessing spawn) for the distributed tests.

Workers are module-level functions of this file (spawned processes import them by name) and
return results through safetensors files, never pickles.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    from pyinterp import distributed as D

    D.init(backend="gloo", device="cpu", timeout_s=120)
    try:
        fn(*args)
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


def run_ranks(world: int, fn, *args) -> None:
    """Run ``fn(*args)`` on ``world`` gloo ranks; raises if any rank fails."""
    tests_dir = str(Path(__file__).parent)
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    mp.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True,
                       start_method="spawn")


def in_process(fn, *args) -> None:
    """Run ``fn`` in this process as world size 1 (no process group)."""
    fn(*args)
