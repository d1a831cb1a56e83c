"""A training process for tests/test_crash_safety.py and tests/test_fault_injection.py (run
as a subprocess and SIGKILLed).

    python tests/crash_train.py sae   <store> <ckpt_dir> <out.safetensors> <log> <delay_s>
    python tests/crash_train.py model <ckpt_dir> <out.safetensors> <log> <delay_s>
    python tests/crash_train.py reproduce <paper> <out_dir>

Resumes from the newest checkpoint in <ckpt_dir> when there is one. Appends one line per
batch it trains on to <log>: "<batch number> <checksum of the batch>", so the test can check
that nothing was lost or trained twice in the effective history.

PYINTERP_TEST_FAULT=<kind>:<n> makes the process SIGKILL itself at the n-th call of a file
operation: "replace" (before the n-th os.replace: a file or checkpoint folder fully written
under its temporary name, or a pointer not yet updated), "torn" (at the n-th fsync of a
temporary file, after cutting it to half its size: a torn temporary file). Linux only.
"""
import os
import signal
import stat
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
SAE_STEPS, MODEL_STEPS = 16, 12


def _arm_fault():
    spec = os.environ.get("PYINTERP_TEST_FAULT")
    if not spec:
        return
    kind, n = spec.split(":")
    n, calls = int(n), [0]
    name = {"replace": "replace", "torn": "fsync"}[kind]
    real = getattr(os, name)

    def hooked(*args, **kwargs):
        if kind == "torn" and ".tmp-" not in os.readlink(f"/proc/self/fd/{args[0]}"):
            return real(*args, **kwargs)  # only the temporaries pyinterp writes (not the log)
        calls[0] += 1
        if calls[0] == n:
            if kind == "torn" and stat.S_ISREG(os.fstat(args[0]).st_mode):
                os.ftruncate(args[0], os.fstat(args[0]).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(os, name, hooked)


_arm_fault()


class Logged:
    """Wraps a batch source: logs each batch and sleeps (so a kill lands mid-run)."""

    def __init__(self, source, log, delay, base=0):
        self.source, self.log, self.delay, self.base = source, log, delay, base

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, s):
        self.source.load_state_dict(s)

    def _record(self, batch):
        with open(self.log, "a") as f:
            f.write(f"{self.base} {float(batch.double().sum()):.17g}\n")
            f.flush()
            os.fsync(f.fileno())
        self.base += 1
        time.sleep(self.delay)

    def __iter__(self):
        for batch in self.source:
            self._record(batch)
            yield batch


def sae(store, ckpt, out, log, delay):
    from pyinterp._files import atomic_save_tensors
    from pyinterp.sae import ActivationStore, SAETrainer, TopKSAE, TrainConfig
    from pyinterp.sae import checkpoint as ck

    src = Logged(ActivationStore(store, 32, seed=1), log, delay)
    if ck.latest(Path(ckpt)) is not None:
        trainer = SAETrainer.resume(ckpt, src)
        src.base = trainer.feed.consumed
    else:
        cfg = TrainConfig(steps=SAE_STEPS, lr=3e-3, checkpoint_every=3, checkpoint_dir=ckpt,
                          progress=False, dead_window_tokens=64, aux_check_every=2,
                          init_batches=1, log_every=4, keep_checkpoints=2)
        trainer = SAETrainer(TopKSAE(16, 48, k=3, seed=0, aux_k=4), src, cfg)
    trainer.run()
    state = {k: v for k, v in trainer.saes["sae"].state_dict().items()}
    for pid, st in trainer.optimizers["sae"].state_dict()["state"].items():
        for k, v in st.items():
            state[f"opt.{pid}.{k}"] = torch.as_tensor(v)
    state["consumed"] = torch.tensor(trainer.feed.consumed)
    state["step"] = torch.tensor(trainer.step)
    atomic_save_tensors(Path(out), state)


def model(ckpt, out, log, delay):
    from pyinterp._files import atomic_save_tensors
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.models.training import TrainConfig, latest_checkpoint, train

    cfg_m = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=32, n_ctx=8,
                              act_fn="gelu", seed=0)
    data = torch.randint(0, 32, (64, 8), generator=torch.Generator().manual_seed(0))
    ck = latest_checkpoint(ckpt)
    base = 0
    if ck is not None:
        import json

        base = json.loads((ck / "trainer_state.json").read_text())["step"]
    box = {"n": base}

    def loss_fn(m, batch):
        with open(log, "a") as f:
            f.write(f"{box['n']} {float(batch.double().sum()):.17g}\n")
            f.flush()
            os.fsync(f.fileno())
        box["n"] += 1
        time.sleep(delay)
        return m.loss(batch)

    cfg = TrainConfig(max_steps=MODEL_STEPS, batch_size=8, lr=3e-3, warmup_steps=2,
                      checkpoint_every=3, log_every=1, progress=False)
    res = train(Transformer(cfg_m), data, cfg, out_dir=ckpt, loss_fn=loss_fn)
    atomic_save_tensors(Path(out), dict(res.model.state_dict(), step=torch.tensor(res.step)))


def reproduce(paper, out):
    from pyinterp import experiments

    os.environ["PYINTERP_PROGRESS"] = "0"
    experiments.reproduce(paper, scale="tiny", device="cpu", out=out, log=lambda *a: None)


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    if kind == "sae":
        sae(*args[:4], float(args[4]))
    elif kind == "model":
        model(*args[:3], float(args[3]))
    else:
        reproduce(*args[:2])
