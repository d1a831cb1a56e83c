"""Checkpoint directories hold one run: run ids, rotation, the writer lock, stale temporaries,
pointers, changed settings (SAE trainer, models.train) and damaged/forged trainer state."""
import json
import shutil
import warnings

import pytest
import torch

from pyinterp._files import CorruptFileError, atomic_write_json
from pyinterp._rundir import DirectoryLockedError, RunMismatchError, WriterLock
from pyinterp.models import Transformer, TransformerConfig
from pyinterp.models import training as mt
from pyinterp.sae import SAETrainer, TopKSAE, TrainConfig
from pyinterp.sae import checkpoint as ck
from sae_testing import sparse_data

DATA = [sparse_data(16, 16, seed=i) for i in range(40)]


def _sae_run(root, steps, every=2, keep=2, fresh=False, seed=0):
    cfg = TrainConfig(steps=steps, checkpoint_every=every, checkpoint_dir=str(root), progress=False,
                      keep_checkpoints=keep, seed=seed)
    tr = SAETrainer(TopKSAE(16, 32, k=2, seed=seed), DATA, cfg, fresh=fresh)
    tr.run()
    return tr


def _steps(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))


def test_new_sae_run_never_touches_an_older_run(tmp_path):
    old = _sae_run(tmp_path, 8)
    before = {p.name: (p / "trainer.json").read_bytes() for p in tmp_path.glob("step_*")}
    # A new, shorter run in the same directory: refused, naming the run that is there.
    with pytest.raises(RunMismatchError, match=f"holds another run \\(run id {old.run_id}"):
        _sae_run(tmp_path, 4)
    assert {p.name: (p / "trainer.json").read_bytes() for p in tmp_path.glob("step_*")} == before
    # fresh=True moves the old run aside (nothing deleted) and the new run keeps its checkpoints.
    new = _sae_run(tmp_path, 4, fresh=True)
    assert _steps(tmp_path) == ["step_00000002", "step_00000004"]
    moved = list((tmp_path / "superseded").iterdir())
    assert len(moved) == 1 and old.run_id in moved[0].name
    assert {p.name: (p / "trainer.json").read_bytes() for p in moved[0].glob("step_*")} == before
    assert json.loads((tmp_path / "latest.json").read_text())["dir"] == "step_00000004"
    resumed = SAETrainer.resume(tmp_path, DATA)
    assert resumed.step == 4 and resumed.run_id == new.run_id != old.run_id


def test_rotation_keeps_only_this_runs_newest(tmp_path):
    tr = _sae_run(tmp_path, 10, every=2, keep=2)
    assert _steps(tmp_path) == ["step_00000008", "step_00000010"]
    assert all(ck.run_of(tmp_path / s) == tr.run_id for s in _steps(tmp_path))


def test_second_sae_writer_fails_at_once(tmp_path):
    seen = {}

    def intruder(trainer, rec):
        if "err" not in seen:
            with pytest.raises(DirectoryLockedError, match="being written by another writer") as e:
                _sae_run(tmp_path, 4, fresh=True)  # even fresh=True must not move a live run
            seen["err"] = str(e.value)

    cfg = TrainConfig(steps=4, checkpoint_every=2, checkpoint_dir=str(tmp_path), progress=False,
                      log_every=3)
    SAETrainer(TopKSAE(16, 32, k=2, seed=0), DATA, cfg, callback=intruder).run()
    assert "pid" in seen["err"] and _steps(tmp_path) == ["step_00000002", "step_00000004"]
    with WriterLock(tmp_path):  # released after the run: the lock is free again
        pass


def test_stale_temporaries_are_cleaned_on_start(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    for name in (".tmp_step_00000003_4242", ".step_00000005.tmp-4242-0badc0de"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sae_sae.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / ".latest.json.tmp-4242-12345678").write_text("{")
    _sae_run(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "latest.json", "step_00000002"]


def test_resume_writes_to_the_directory_it_was_given(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _sae_run(a, 4)
    shutil.copytree(a, b)
    snapshot = {p: p.read_bytes() for p in a.rglob("*") if p.is_file()}
    SAETrainer.resume(b, DATA, steps=6).run()
    assert _steps(b) == ["step_00000004", "step_00000006"]
    assert {p: p.read_bytes() for p in a.rglob("*") if p.is_file()} == snapshot  # a untouched


@pytest.mark.parametrize("pointer", [None, "{", {"dir": "../a"}, {"dir": "/etc"},
                                     {"dir": "step_00000099"}])
def test_bad_or_missing_pointer_uses_verified_step_folders(tmp_path, pointer):
    _sae_run(tmp_path, 6, keep=3)
    latest = tmp_path / "latest.json"
    if pointer is None:
        latest.unlink()
    elif isinstance(pointer, str):
        latest.write_text(pointer)
    else:
        atomic_write_json(latest, dict(pointer, step=99, run_id="x"), checksum=True)
    # the newest step folder is damaged: the next one that verifies is used, with a warning
    (tmp_path / "step_00000006" / "state.safetensors").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="step_00000004, the newest checkpoint folder"):
        tr = SAETrainer.resume(tmp_path, DATA)
    assert tr.step == 4
    for d in _steps(tmp_path):
        (tmp_path / d / "trainer.json").write_text("{}")
    with pytest.raises(CorruptFileError, match="no checkpoint folder .* verifies"):
        SAETrainer.resume(tmp_path, DATA)


def test_forged_trainer_state_is_refused_before_allocation(tmp_path):
    _sae_run(tmp_path, 2)
    f = tmp_path / "step_00000002" / "trainer.json"
    meta = json.loads(f.read_text())
    meta.pop("sha256")
    meta["saes"]["sae"]["config"]["d_sae"] = 1 << 40  # a valid checksum over a forged size
    atomic_write_json(f, meta, checksum=True)
    with pytest.raises(CorruptFileError, match=r"sae_sae\.safetensors: tensor W_enc has shape"):
        SAETrainer.resume(tmp_path, DATA)
    meta["saes"]["sae"]["config"]["d_sae"] = 32
    meta["files"]["sae_sae.safetensors"] = meta["files"].pop("sae_sae.safetensors")
    meta["files"]["../../etc/passwd"] = "0" * 64
    atomic_write_json(f, meta, checksum=True)
    with pytest.raises(CorruptFileError, match="leaves its directory"):
        SAETrainer.resume(tmp_path, DATA)


# ------------------------------------------------------------------ models.train
def _model(seed=0):
    return Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=32, n_ctx=8,
                                         act_fn="gelu", seed=seed))


TOKENS = torch.randint(0, 32, (32, 8), generator=torch.Generator().manual_seed(0))


def _train(out, steps=4, **kw):
    cfg = mt.TrainConfig(max_steps=steps, batch_size=4, checkpoint_every=2, progress=False,
                         keep_checkpoints=kw.pop("keep", 1), lr=kw.pop("lr", 1e-3))
    return mt.train(_model(), TOKENS, cfg, out_dir=out, **kw)


def test_model_train_refuses_another_run_and_changed_settings(tmp_path):
    first = _train(tmp_path, 6, keep=3)
    with pytest.raises(RunMismatchError, match="resume=False"):
        _train(tmp_path, 4, resume=False)
    with pytest.raises(RunMismatchError, match=r"train.lr: 0.001 -> 0.003"):
        _train(tmp_path, 6, lr=3e-3)
    with pytest.raises(RunMismatchError, match=r"train.max_steps: 6 -> 4"):
        _train(tmp_path, 4)  # before: silently returned the 6-step model
    again = _train(tmp_path, 6)  # same settings: the finished run, nothing retrained
    assert again.step == 6 and torch.equal(again.model.embed.W_E, first.model.embed.W_E)
    res = _train(tmp_path, 4, fresh=True, keep=3)
    assert res.step == 4 and sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-0000002", "step-0000004"]
    moved = next((tmp_path / "superseded").iterdir())
    assert sorted(p.name for p in moved.iterdir()) == ["latest", "metrics.json", "step-0000002",
                                                        "step-0000004", "step-0000006"]


def test_model_train_missing_pointer_resumes_never_restarts(tmp_path):
    _train(tmp_path, 4, stop_after=2, keep=2)
    (tmp_path / "latest").unlink()
    with pytest.warns(UserWarning, match="step-0000002, the newest checkpoint folder"):
        res = _train(tmp_path, 4, keep=2)
    # resumed at step 2 (a restart from 0 would have logged step 4 alone)
    assert [r[0] for r in res.history["loss"]] == [2, 4]
    for bad in ("../x", "/tmp", "step-0000099", "\xff"):
        (tmp_path / "latest").write_text(bad)
        with pytest.warns(UserWarning, match="newest checkpoint folder that verifies"):
            assert mt.latest_checkpoint(tmp_path).name == "step-0000004"


def test_model_train_second_writer_fails_at_once(tmp_path):
    with WriterLock(tmp_path, "training directory"):
        with pytest.raises(DirectoryLockedError, match=f"training directory {tmp_path}"):
            _train(tmp_path, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _train(tmp_path, 2).step == 2
