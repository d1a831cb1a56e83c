"""Damaged checkpoints and shards are detected, never loaded: each file of an SAE checkpoint,
a model checkpoint and an activation shard truncated or with a flipped byte. (SIGKILL and
resume: tests/test_fault_injection.py; every loader against a corpus of damaged and forged
files: tests/test_damaged_files.py.)"""
from pathlib import Path

import pytest
import torch

from pyinterp.sae import ActivationStore, CorruptFileError, SAETrainer, collect
from sae_testing import sparse_data


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("acts")
    collect(root, [sparse_data(32, 16, seed=i) for i in range(12)], shard_rows=64, progress=False)
    return root


def _truncate(f: Path):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _flip(f: Path):
    data = bytearray(f.read_bytes())
    data[len(data) - 3] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "bitflip"])
def test_damaged_sae_checkpoint_is_reported_never_loaded(store, tmp_path, damage):
    from pyinterp.sae import TopKSAE, TrainConfig

    tr = SAETrainer(TopKSAE(16, 48, k=3, seed=0), ActivationStore(store, 32),
                    TrainConfig(steps=2, checkpoint_dir=str(tmp_path / "ck"), progress=False))
    tr.run()
    path = tr.last_checkpoint
    for victim in sorted(path.glob("*.safetensors")):
        saved = victim.read_bytes()
        damage(victim)
        with pytest.raises(CorruptFileError, match=victim.name):
            SAETrainer.resume(tmp_path / "ck", ActivationStore(store, 32))
        victim.write_bytes(saved)
    SAETrainer.resume(tmp_path / "ck", ActivationStore(store, 32))  # intact again: loads


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "bitflip"])
def test_damaged_model_checkpoint_is_reported_never_loaded(tmp_path, damage):
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.models.training import (
        TrainConfig,
        latest_checkpoint,
        load_checkpoint,
        make_optimizer,
        train,
    )

    m = Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=32, n_ctx=8,
                                      act_fn="gelu"))
    data = torch.randint(0, 32, (16, 8))
    cfg = TrainConfig(max_steps=1, batch_size=4, progress=False)
    train(m, data, cfg, out_dir=tmp_path)
    ck = latest_checkpoint(tmp_path)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for victim in sorted(p for p in ck.iterdir() if p.name != "checksums.json"):
        saved = victim.read_bytes()
        damage(victim)
        with torch.no_grad():
            for p in m.parameters():
                p.zero_()
        with pytest.raises(CorruptFileError, match=victim.name):
            load_checkpoint(ck, m, make_optimizer(m, cfg))
        assert all(float(p.abs().sum()) == 0 for p in m.parameters())  # nothing was loaded
        victim.write_bytes(saved)
    load_checkpoint(ck, m, make_optimizer(m, cfg))
    for k, v in before.items():
        assert torch.equal(m.state_dict()[k], v)


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "bitflip"])
def test_damaged_activation_shard_is_reported_never_loaded(store, tmp_path, damage):
    import shutil

    copy = tmp_path / "acts"
    shutil.copytree(store, copy)
    victim = sorted(copy.glob("shard_*.safetensors"))[1]
    damage(victim)
    s = ActivationStore(copy, 32, shuffle=False)
    with pytest.raises(CorruptFileError, match=victim.name):
        for _ in range(len(list(copy.glob("shard_*"))) * 2):
            s.next_batch()
