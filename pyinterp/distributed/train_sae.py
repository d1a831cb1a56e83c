"""Data-parallel TopK/ReLU dictionary training from an activation store, for ``torchrun``.

    torchrun --standalone --nproc_per_node=8 -m pyinterp.distributed.train_sae \
        --store acts/ --out runs/sae --d-sae 16384 --k 32 --steps 20000 \
        --global-batch 4096 --streams 8 --checkpoint-every 500

Re-running the same command resumes from the newest checkpoint in ``--out`` (on any number of
ranks dividing ``--streams``). Rank 0 writes the checkpoints and, at the end, the dictionary in
the SAELens layout to ``<out>/final``.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m pyinterp.distributed.train_sae",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="activation store directory (manifest.json)")
    p.add_argument("--out", required=True, help="checkpoint and output directory")
    p.add_argument("--hook", default=None, help="hook name in the store (default: its only one)")
    p.add_argument("--arch", choices=("topk", "standard"), default="topk")
    p.add_argument("--d-sae", type=int, required=True)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--l1", type=float, default=5.0, help="L1 coefficient (standard)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--global-batch", type=int, default=4096)
    p.add_argument("--streams", type=int, default=8,
                   help="data streams; every world size you run on must divide it")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from pyinterp import distributed as D
    from pyinterp.sae import ReLUSAE, TopKSAE, TrainConfig
    from pyinterp.sae import checkpoint as ckpt
    from pyinterp.sae.store import read_manifest

    device = D.init(device=a.device)
    hooks = [a.hook] if a.hook else None
    source = D.RankSource(a.store, a.global_batch, streams=a.streams, hook_names=hooks,
                          seed=a.seed, device=device)
    out = Path(a.out)
    if ckpt.latest(out) is not None:
        trainer = D.DataParallelSAETrainer.resume(out, source, device=device)
    else:
        m = read_manifest(a.store)
        hook = a.hook or sorted(m["hooks"])[0]
        d_in = m["hooks"][hook]["d"]
        if a.arch == "topk":
            sae = TopKSAE(d_in, a.d_sae, k=a.k, hook_name=hook, device=device, seed=a.seed)
        else:
            sae = ReLUSAE(d_in, a.d_sae, l1_coefficient=a.l1, hook_name=hook, device=device,
                          seed=a.seed)
        cfg = TrainConfig(steps=a.steps, lr=a.lr, checkpoint_every=a.checkpoint_every,
                          checkpoint_dir=str(out), seed=a.seed, progress=D.rank() == 0)
        trainer = D.DataParallelSAETrainer({"sae": sae}, source, cfg)
    trainer.run()
    if D.rank() == 0:
        trainer.saes["sae"].save(out / "final")
    D.barrier()


if __name__ == "__main__":
    main()
