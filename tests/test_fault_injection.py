"""Fault injection (the adversarial pass of issue 16, repeated on every CI run):

- SIGKILL at random points of SAE training, model training and ``reproduce``: at a random
  moment, or exactly inside a file operation (a file or checkpoint folder written under its
  temporary name but not renamed, a torn half-written temporary, a pointer not updated); the
  restarted run resumes and gives the uninterrupted run's result bit for bit, leaving no
  temporary behind;
- a full disk in the middle of a checkpoint / save (a small tmpfs in a user namespace; where
  namespaces are not allowed, a lowered RLIMIT_FSIZE): DiskFullError naming the file, the
  previous checkpoint intact, a resumed run equal to an uninterrupted one (tests/full_disk.py);
- two writers on one directory: the second fails at once, naming the first; the first is
  unaffected.

The kill points are drawn from a fixed seed, so a failure reproduces. Counts go to
$PYINTERP_FAULT_REPORT (tests/fault_testing.py) for docs/reliability.md.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fault_testing as F
from pyinterp._files import load_tensors
from pyinterp._rundir import DirectoryLockedError
from pyinterp.sae import collect
from sae_testing import sparse_data

HERE = Path(__file__).parent
SCRIPT = str(HERE / "crash_train.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent), PYINTERP_PROGRESS="0")
RNG = random.Random(16)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    F.dump(__name__)


def _child(args, fault=None, timeout=300):
    env = dict(ENV, **({"PYINTERP_TEST_FAULT": fault} if fault else {}))
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], env=env, timeout=timeout,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _lines(log: Path):
    return log.read_text().splitlines() if log.exists() else []


def _temporaries(d: Path):
    return sorted(p.name for p in Path(d).rglob("*") if ".tmp" in p.name)


def _kill_when(args, log: Path, ready, timeout=300) -> None:
    """Start the child; SIGKILL it once ``ready()`` holds (a point in time of the run)."""
    p = subprocess.Popen([sys.executable, SCRIPT, *map(str, args)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while not ready():
            assert p.poll() is None, "the child finished before the kill point"
            assert time.time() - t0 < timeout
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=60) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()


def _interrupt(args, log: Path, fault: str) -> None:
    """Run the child until the fault kills it: "time:<batches>" (the parent kills it after
    that many batches) or a self-inflicted kill inside a file operation (crash_train.py)."""
    kind, n = fault.split(":")
    if kind == "time":
        _kill_when(args, log, lambda: len(_lines(log)) >= int(n))
    else:
        r = _child(args, fault=fault)
        assert r.returncode == -signal.SIGKILL, f"fault {fault} never fired: {r.stderr[-2000:]}"


def _check_resumed(ref_lines, log: Path, killed_lines: int):
    """Effective history = the batches before the checkpoint it resumed from + the resumed
    run's: equal to the uninterrupted run's, batch for batch (nothing lost, nothing twice)."""
    got = _lines(log)
    first, second = got[:killed_lines], got[killed_lines:]
    start = int(second[0].split()[0]) if second else len(ref_lines)
    assert start <= len(first)
    assert first[:start] + second == ref_lines


# ------------------------------------------------------------------ SIGKILL: SAE trainer
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("acts")
    collect(root, [sparse_data(32, 16, seed=i) for i in range(12)], shard_rows=64, progress=False)
    return root


@pytest.fixture(scope="module")
def sae_reference(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("sae_ref")
    r = _child(["sae", store, d / "ck", d / "out.st", d / "log", 0])
    assert r.returncode == 0, r.stderr
    return load_tensors(d / "out.st"), _lines(d / "log")


# 7 file replacements per SAE checkpoint (4 tensors files, trainer.json, the folder,
# latest.json), 6 checkpoints; 6 temporary files fsynced per checkpoint.
SAE_FAULTS = ["time:7", f"replace:{RNG.randint(1, 14)}", f"replace:{RNG.randint(15, 42)}",
              f"torn:{RNG.randint(1, 36)}"]


@pytest.mark.parametrize("fault", SAE_FAULTS)
def test_sae_training_survives_sigkill(store, sae_reference, tmp_path, fault):
    ref, ref_lines = sae_reference
    ck, log = tmp_path / "ck", tmp_path / "log"
    args = ["sae", store, ck, tmp_path / "out.st", log, 0.05 if fault.startswith("time") else 0]
    _interrupt(args, log, fault)
    killed = len(_lines(log))
    r = _child(["sae", store, ck, tmp_path / "out.st", log, 0])
    assert r.returncode == 0, r.stderr[-3000:]
    got = load_tensors(tmp_path / "out.st")
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    _check_resumed(ref_lines, log, killed)
    assert _temporaries(ck) == []
    F.record("SIGKILL: SAE training", "held")


# ------------------------------------------------------------------ SIGKILL: models.train
@pytest.fixture(scope="module")
def model_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("model_ref")
    r = _child(["model", d / "ck", d / "out.st", d / "log", 0])
    assert r.returncode == 0, r.stderr
    return load_tensors(d / "out.st"), _lines(d / "log")


# 10 replacements per checkpoint (7 files, the folder, latest, metrics.json), 4 checkpoints;
# 9 temporary files fsynced per checkpoint.
MODEL_FAULTS = ["time:5", f"replace:{RNG.randint(1, 10)}", f"replace:{RNG.randint(11, 40)}",
                f"torn:{RNG.randint(1, 36)}"]


@pytest.mark.parametrize("fault", MODEL_FAULTS)
def test_model_training_survives_sigkill(model_reference, tmp_path, fault):
    ref, ref_lines = model_reference
    ck, log = tmp_path / "ck", tmp_path / "log"
    args = ["model", ck, tmp_path / "out.st", log, 0.05 if fault.startswith("time") else 0]
    _interrupt(args, log, fault)
    killed = len(_lines(log))
    r = _child(["model", ck, tmp_path / "out.st", log, 0])
    assert r.returncode == 0, r.stderr[-3000:]
    got = load_tensors(tmp_path / "out.st")
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    _check_resumed(ref_lines, log, killed)
    assert _temporaries(ck) == []
    F.record("SIGKILL: model training", "held")


# ------------------------------------------------------------------ SIGKILL: reproduce
PAPER = "superposition"


def _outcome(out: Path):
    """What a reproduce run computed: its metrics and checks, and every step's tensors."""
    data = json.loads((out / PAPER / "metrics.json").read_text())
    steps = {p.name: load_tensors(p) for p in (out / PAPER / "checkpoints").rglob("*.safetensors")}
    return {"metrics": data["metrics"], "checks": data["checks"]}, steps


@pytest.fixture(scope="module")
def reproduce_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep_ref")
    r = _child(["reproduce", PAPER, out])
    assert r.returncode == 0, r.stderr[-3000:]
    return _outcome(out)


# replacements: config.json, then each step's file, figures, metrics.json, index.html
REPRODUCE_FAULTS = [f"replace:{RNG.randint(2, 4)}", f"torn:{RNG.randint(2, 8)}"]


@pytest.mark.parametrize("fault", REPRODUCE_FAULTS)
def test_reproduce_survives_sigkill(reproduce_reference, tmp_path, fault):
    (ref_json, ref_steps) = reproduce_reference
    r = _child(["reproduce", PAPER, tmp_path], fault=fault)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    r = _child(["reproduce", PAPER, tmp_path])
    assert r.returncode == 0, r.stderr[-3000:]
    got_json, got_steps = _outcome(tmp_path)
    assert got_json == ref_json
    assert set(got_steps) == set(ref_steps)
    for name, t in ref_steps.items():
        assert set(t) == set(got_steps[name]) and all(torch.equal(t[k], got_steps[name][k])
                                                      for k in t), name
    assert _temporaries(tmp_path) == []
    F.record("SIGKILL: reproduce", "held")


# ------------------------------------------------------------------ full disk
def _namespace_tmpfs(target: Path):
    """argv prefix running a command with a 24 MB tmpfs on ``target`` (a user + mount
    namespace), or None where that is not allowed."""
    if shutil.which("unshare") is None:
        return None
    target.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o size=24m tmpfs "$0" && exec "$@"'
    prefix = ["unshare", "-rm", "sh", "-c", script, str(target)]
    probe = subprocess.run(prefix + ["sh", "-c", "echo ok"], capture_output=True, text=True)
    return prefix if probe.stdout.strip() == "ok" else None


def test_full_disk_mid_write(tmp_path):
    small, normal = tmp_path / "small", tmp_path / "normal"
    normal.mkdir()
    prefix = _namespace_tmpfs(small)
    mechanism = "tmpfs" if prefix else "fsize"
    cmd = (prefix or []) + [sys.executable, str(HERE / "full_disk.py"), str(small), str(normal),
                            mechanism]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"full disk by {mechanism}:", json.dumps(res, indent=1))
    for name in ("sae_trainer", "model_trainer"):
        case = res[name]
        assert "crashed" not in case, case.get("crashed")
        assert case["names_checkpoint"] and case["says_intact"], case["message"]
        assert case["temporaries"] == [] and case["resumed_equal"], case
        F.record(f"full disk ({mechanism}): {name.replace('_', ' ')}", "clear error")
    assert res["sae_trainer"]["pointer"] == "step_00000001"
    assert res["model_trainer"]["pointer"] == "step-0000001"
    assert "crashed" not in res["saved_files"], res["saved_files"].get("crashed")
    for name, case in res["saved_files"].items():
        assert case["names_file"] and case["previous_loads"] and case["temporaries"] == [], \
            (name, case)
        F.record(f"full disk ({mechanism}): {name}", "clear error")


# ------------------------------------------------------------------ two writers
def test_two_sae_trainers_on_one_directory(store, sae_reference, tmp_path):
    from pyinterp.sae import ActivationStore, SAETrainer, TopKSAE, TrainConfig

    ref, _ = sae_reference
    ck, log = tmp_path / "ck", tmp_path / "log"
    p = subprocess.Popen([sys.executable, SCRIPT, "sae", store, ck, tmp_path / "out.st", log,
                          "0.1"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while len(_lines(log)) < 2:
            assert p.poll() is None and time.time() - t0 < 120
            time.sleep(0.02)
        second = SAETrainer(TopKSAE(16, 48, k=3, seed=0), ActivationStore(store, 32),
                            TrainConfig(steps=4, checkpoint_dir=str(ck), progress=False,
                                        checkpoint_every=1), fresh=True)
        t1 = time.perf_counter()
        with pytest.raises(DirectoryLockedError, match=f"pid {p.pid}"):
            second.run()
        assert time.perf_counter() - t1 < 2  # at once, before any training
        assert second.step == 0
    finally:
        assert p.wait(timeout=300) == 0
    got = load_tensors(tmp_path / "out.st")
    assert all(torch.equal(got[k], ref[k]) for k in ref)  # the first writer is unaffected
    F.record("two writers: SAE trainer", "clear error")


def test_two_model_trainers_on_one_directory(model_reference, tmp_path):
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.models.training import TrainConfig, train

    ref, _ = model_reference
    ck, log = tmp_path / "ck", tmp_path / "log"
    p = subprocess.Popen([sys.executable, SCRIPT, "model", ck, tmp_path / "out.st", log, "0.1"],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while len(_lines(log)) < 2:
            assert p.poll() is None and time.time() - t0 < 120
            time.sleep(0.02)
        m = Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=32, n_ctx=8))
        with pytest.raises(DirectoryLockedError, match=f"pid {p.pid}"):
            train(m, torch.zeros(16, 8, dtype=torch.long), TrainConfig(max_steps=2, batch_size=4,
                                                                       progress=False),
                  out_dir=ck, fresh=True)
    finally:
        assert p.wait(timeout=300) == 0
    got = load_tensors(tmp_path / "out.st")
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    F.record("two writers: model training", "clear error")


def test_two_reproduce_runs_on_one_output(tmp_path):
    from pyinterp import experiments

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pyinterp._rundir import WriterLock; "
        f"lock = WriterLock({str(tmp_path / PAPER)!r}).acquire(); print('held', flush=True); "
        "time.sleep(60)")], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t1 = time.perf_counter()
        with pytest.raises(DirectoryLockedError, match=f"output directory of {PAPER}"):
            experiments.run_paper(PAPER, "tiny", "cpu", tmp_path)
        assert time.perf_counter() - t1 < 5
        assert not (tmp_path / PAPER / "checkpoints").exists()  # nothing was computed
    finally:
        holder.kill()
        holder.wait()
    F.record("two writers: reproduce", "clear error")
