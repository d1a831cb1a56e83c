"""Fill a small filesystem in the middle of each writer's work (run by
tests/test_fault_injection.py inside a user+mount namespace with a tmpfs, or with a lowered
RLIMIT_FSIZE where namespaces are not allowed) and check the promises: a DiskFullError naming
the file / checkpoint, the previous state intact and verifiable, no temporary left, and after
space is freed a resumed run equal to an uninterrupted one. Prints one JSON object.

    python tests/full_disk.py <dir on the small fs> <dir on a normal fs> tmpfs|fsize
"""
import errno
import json
import os
import resource
import signal
import sys
import traceback
from pathlib import Path

import torch

torch.set_num_threads(1)
SMALL, NORMAL, MECHANISM = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
BALLAST = SMALL / "ballast"
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past RLIMIT_FSIZE: EFBIG instead of a kill


def fill(leave: int) -> None:
    """Leave about ``leave`` bytes writable: fill the tmpfs with ballast and free ``leave`` of
    it, or cap the size of any file at ``leave`` bytes."""
    if MECHANISM == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (leave, resource.RLIM_INFINITY))
        return
    with open(BALLAST, "ab") as f:
        block = b"\0" * (1 << 16)
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    os.truncate(BALLAST, max(0, BALLAST.stat().st_size - leave))


def free() -> None:
    if MECHANISM == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    elif BALLAST.exists():
        BALLAST.unlink()


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def temps(path: Path) -> list:
    return sorted(str(p) for p in path.rglob("*") if ".tmp" in p.name)


def expect_full(fn) -> str:
    from pyinterp._files import DiskFullError

    try:
        fn()
    except DiskFullError as exc:
        return str(exc)
    raise AssertionError("the write did not fail on the full filesystem")


# ------------------------------------------------------------------ the cases
def sae_trainer() -> dict:
    from pyinterp.sae import ActivationStore, SAETrainer, TopKSAE, TrainConfig
    from pyinterp.sae import checkpoint as ck

    data = torch.randn(512, 32, generator=torch.Generator().manual_seed(0))

    def trainer(root, callback=None):
        cfg = TrainConfig(steps=6, checkpoint_every=1, log_every=1, checkpoint_dir=str(root),
                          progress=False, keep_checkpoints=2)
        return SAETrainer(TopKSAE(32, 256, k=4, seed=0), ActivationStore.from_tensors(
            data, 32, seed=1), cfg, callback=callback)

    ref = trainer(NORMAL / "sae_ref")
    ref.run()
    root = SMALL / "sae_ck"

    def at_step(tr, rec):
        if tr.step == 2:
            fill(size_of(root / "step_00000001") // 2)

    msg = expect_full(trainer(root, at_step).run)
    left = temps(root)
    pointer = json.loads((root / "latest.json").read_text())["dir"]
    ck.read(root / "step_00000001")  # verifies every checksum
    free()
    resumed = SAETrainer.resume(root, ActivationStore.from_tensors(data, 32, seed=1))
    resumed.run()
    same = all(torch.equal(a, b) for a, b in zip(ref.saes["sae"].state_dict().values(),
                                                  resumed.saes["sae"].state_dict().values()))
    return {"message": msg, "names_checkpoint": "step_00000002" in msg,
            "says_intact": "step_00000001 is intact" in msg, "temporaries": left,
            "pointer": pointer, "resumed_equal": same}


def model_trainer() -> dict:
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.models.training import TrainConfig, train

    data = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    mcfg = TransformerConfig(n_layers=1, d_model=64, n_heads=4, d_vocab=64, n_ctx=16,
                             act_fn="gelu", seed=0)
    cfg = TrainConfig(max_steps=5, batch_size=8, checkpoint_every=1, progress=False,
                      keep_checkpoints=2)
    ref = train(Transformer(mcfg), data, cfg, out_dir=NORMAL / "model_ref").model
    root = SMALL / "model_ck"
    box = {"n": 0}

    def loss_fn(m, batch):
        box["n"] += 1
        if box["n"] == 2:
            fill(size_of(root / "step-0000001") // 2)
        return m.loss(batch)

    msg = expect_full(lambda: train(Transformer(mcfg), data, cfg, out_dir=root, loss_fn=loss_fn))
    left = temps(root)
    pointer = (root / "latest").read_text()
    free()
    res = train(Transformer(mcfg), data, cfg, out_dir=root)
    same = all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(),
                                                  res.model.state_dict().values()))
    return {"message": msg, "names_checkpoint": "step-0000002" in msg,
            "says_intact": "step-0000001 is intact" in msg, "temporaries": left,
            "pointer": pointer, "resumed_equal": same}


def saved_files() -> dict:
    """sae.save and save_model over an existing save, and an experiment step, on a full disk:
    the error names the file and the previous save still loads, unchanged."""
    from pyinterp.experiments._steps import Steps
    from pyinterp.models import Transformer, TransformerConfig, load_model, save_model
    from pyinterp.sae import TopKSAE, load

    out = {}
    first, second = TopKSAE(64, 512, k=4, seed=0), TopKSAE(64, 512, k=4, seed=1)
    first.save(SMALL / "sae")
    fill(4096)
    msg = expect_full(lambda: second.save(SMALL / "sae"))
    free()
    again = load(SMALL / "sae")
    out["sae.save"] = {"message": msg, "names_file": str(SMALL / "sae") in msg,
                       "previous_loads": torch.equal(again.W_enc, first.W_enc),
                       "temporaries": temps(SMALL / "sae")}
    mcfg = TransformerConfig(n_layers=1, d_model=64, n_heads=4, d_vocab=256, n_ctx=16)
    m1 = Transformer(mcfg)
    save_model(m1, SMALL / "model")
    fill(4096)
    msg = expect_full(lambda: save_model(Transformer(TransformerConfig(**dict(
        mcfg.to_dict(), seed=1))), SMALL / "model"))
    free()
    out["save_model"] = {"message": msg, "names_file": str(SMALL / "model") in msg,
                         "previous_loads": torch.equal(load_model(SMALL / "model").embed.W_E,
                                                       m1.embed.W_E),
                         "temporaries": temps(SMALL / "model")}
    steps = Steps(SMALL / "steps", "x", "hash")
    fill(4096)
    msg = expect_full(lambda: steps.run("big", lambda: {"t": torch.ones(1 << 16)}))
    free()
    res = steps.run("big", lambda: {"t": torch.ones(1 << 16)})
    out["experiment step"] = {"message": msg, "names_file": "big.safetensors" in msg,
                              "previous_loads": bool(res["t"].sum() == 1 << 16),
                              "temporaries": temps(SMALL / "steps")}
    return out


if __name__ == "__main__":
    results = {"mechanism": MECHANISM}
    for name, case in (("sae_trainer", sae_trainer), ("model_trainer", model_trainer),
                       ("saved_files", saved_files)):
        try:
            results[name] = case()
        except Exception:  # report, so the test shows which case broke and how
            free()
            results[name] = {"crashed": traceback.format_exc()}
    print(json.dumps(results))
