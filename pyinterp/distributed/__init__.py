"""Scale-out on torch.distributed: data-parallel dictionary training and activation
collection, and latent-parallel dictionaries (W_enc/W_dec split by latent across ranks).

Launch with ``torchrun`` (docs/distributed.md); gloo on CPU, NCCL on GPUs. Nothing here
schedules processes itself.
"""
from pyinterp.distributed._group import (
    barrier,
    init,
    is_initialized,
    local_rank,
    rank,
    rank_device,
    world_size,
)
from pyinterp.distributed.data import RankSource, ShardSubsetStore, collect, merge_manifests
from pyinterp.distributed.trainer import DataParallelSAETrainer

__all__ = ["DataParallelSAETrainer", "RankSource", "ShardSubsetStore", "barrier", "collect",
           "init", "is_initialized", "local_rank", "merge_manifests", "rank", "rank_device",
           "world_size"]
