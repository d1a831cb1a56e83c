"""Crash safety: SIGKILL a training process part way, restart it, and check that it resumes
from the last checkpoint with nothing lost or trained twice and the same final result as an
uninterrupted run; corrupted or truncated checkpoints and shards are detected, never loaded."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sae_testing import sparse_data
from pyinterp.sae import ActivationStore, CorruptFileError, SAETrainer, collect
from pyinterp._files import load_tensors

HERE = Path(__file__).parent
SCRIPT = str(HERE / "crash_train.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("acts")
    collect(root, [sparse_data(32, 16, seed=i) for i in range(12)], shard_rows=64, progress=False)
    return root


def _run(args, timeout=300):
    subprocess.run([sys.executable, SCRIPT, *map(str, args)], env=ENV, check=True,
                   timeout=timeout, stdout=subprocess.DEVNULL)


def _run_and_kill(args, ckpt: Path, log: Path, kill_after_lines: int, timeout=300):
    """Start the trainer, SIGKILL it once it has trained ``kill_after_lines`` batches and
    written a checkpoint; returns the number of batches it logged before dying."""
    p = subprocess.Popen([sys.executable, SCRIPT, *map(str, args)], env=ENV,
                         stdout=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if p.poll() is not None:
                raise AssertionError("the trainer finished before it could be killed")
            n = len(log.read_text().splitlines()) if log.exists() else 0
            if n >= kill_after_lines and (ckpt / "latest.json").exists() or \
                    (ckpt / "latest").exists() and n >= kill_after_lines:
                os.kill(p.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        assert p.wait(timeout=60) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
    return len(log.read_text().splitlines())


def _lines(log: Path):
    return [tuple(line.split()) for line in log.read_text().splitlines()]


def _check_history(ref_log, crash_log, killed_lines, resumed_from):
    """The effective history (first run up to the checkpoint + the resumed run) equals the
    uninterrupted run's, batch for batch."""
    ref, got = _lines(ref_log), _lines(crash_log)
    first, second = got[:killed_lines], got[killed_lines:]
    assert int(second[0][0]) == resumed_from <= len(first)  # resumed at the checkpoint
    effective = first[:resumed_from] + second
    assert effective == ref  # nothing lost, nothing twice, same order


def test_sae_trainer_survives_sigkill(store, tmp_path):
    _run(["sae", store, tmp_path / "ref", tmp_path / "ref.st", tmp_path / "ref.log", 0])
    ck, log = tmp_path / "ck", tmp_path / "crash.log"
    killed = _run_and_kill(["sae", store, ck, tmp_path / "x.st", log, 0.15], ck, log, 8)
    import json

    meta = json.loads((ck / json.loads((ck / "latest.json").read_text())["dir"] /
                       "trainer.json").read_text())
    resumed_from = meta["feed"]["consumed"]
    _run(["sae", store, ck, tmp_path / "crash.st", log, 0])
    _check_history(tmp_path / "ref.log", log, killed, resumed_from)
    ref, got = load_tensors(tmp_path / "ref.st"), load_tensors(tmp_path / "crash.st")
    assert set(ref) == set(got)
    for k in ref:  # bit-identical: same batches, same order, same optimizer state
        assert torch.equal(ref[k], got[k]), k


def test_model_trainer_survives_sigkill(tmp_path):
    _run(["model", tmp_path / "ref", tmp_path / "ref.st", tmp_path / "ref.log", 0])
    ck, log = tmp_path / "ck", tmp_path / "crash.log"
    killed = _run_and_kill(["model", ck, tmp_path / "x.st", log, 0.15], ck, log, 5)
    import json

    latest = (ck / "latest").read_text().strip()
    resumed_from = json.loads((ck / latest / "trainer_state.json").read_text())["step"]
    _run(["model", ck, tmp_path / "crash.st", log, 0])
    _check_history(tmp_path / "ref.log", log, killed, resumed_from)
    ref, got = load_tensors(tmp_path / "ref.st"), load_tensors(tmp_path / "crash.st")
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


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
    from pyinterp.models.training import (TrainConfig, latest_checkpoint,
                                          load_checkpoint, make_optimizer, train)

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
