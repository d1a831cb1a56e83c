"""Worker functions for tests/test_distributed*.py (run on every rank by dist_testing)."""
from __future__ import annotations

from pathlib import Path

import torch

from pyinterp import distributed as D
from pyinterp._files import atomic_save_tensors
from pyinterp.sae import ReLUSAE, TopKSAE, TrainConfig

D_IN, D_SAE, K = 16, 48, 3


def train_cfg(ckpt_dir, steps=10, **kw):
    base = dict(steps=steps, lr=3e-3, warmup_steps=2, decay_fraction=0.3, grad_clip=0.5,
                checkpoint_every=3, checkpoint_dir=str(ckpt_dir), log_every=2,
                dead_window_tokens=32, aux_check_every=2, progress=False, init_batches=2,
                b_dec_init="geometric_median")
    base.update(kw)
    return TrainConfig(**base)


def make_saes(arch="topk"):
    if arch == "relu":
        return {"relu": ReLUSAE(D_IN, D_SAE, seed=2, l1_coefficient=0.5)}
    if arch == "both":
        return {"topk": TopKSAE(D_IN, D_SAE, k=K, seed=0, aux_k=4),
                "relu": ReLUSAE(D_IN, 24, seed=2, l1_coefficient=0.5)}
    return {"topk": TopKSAE(D_IN, D_SAE, k=K, seed=0, aux_k=4)}


def save_state(trainer, out: Path) -> None:
    t = {}
    for name, sae in trainer.saes.items():
        for k, v in sae.state_dict().items():
            t[f"{name}.{k}"] = v
        t[f"{name}.since_fired"] = trainer.since_fired[name]
        t[f"{name}.fire_counts"] = trainer.fire_counts[name]
    t["tokens"] = torch.tensor(trainer.tokens)
    t["step"] = torch.tensor(trainer.step)
    atomic_save_tensors(out, t)


def dp_train(store, ckpt_dir, out, arch="topk", steps=10, stop_at=None, streams=4,
             global_batch=32, seed_offset=0):
    """Train (or resume when ckpt_dir holds a checkpoint) and let rank 0 save the state."""
    source = D.RankSource(store, global_batch, streams=streams, seed=3)
    from pyinterp.sae import checkpoint as ckpt

    if ckpt.latest(Path(ckpt_dir)) is not None:
        trainer = D.DataParallelSAETrainer.resume(ckpt_dir, source, progress=False)
    else:
        saes = make_saes(arch)
        if seed_offset and D.rank() > 0:  # other ranks' seeds do not matter: rank 0's weights win
            for s in saes.values():
                s.reset_parameters(seed=100 + D.rank())
        trainer = D.DataParallelSAETrainer(saes, source, train_cfg(ckpt_dir, steps))
    trainer.run(None if stop_at is None else stop_at - trainer.step)
    if D.rank() == 0:
        save_state(trainer, Path(out))
    D.barrier()


def dp_collect(out_dir, n_inputs, shard_rows):
    from sae_testing import sparse_data

    inputs = [torch.tensor([i]) for i in range(n_inputs)]

    def model(item):  # a deterministic "model": each input gives its own 8 rows
        return sparse_data(8, D_IN, seed=int(item[0]))

    D.collect(out_dir, model, inputs, shard_rows=shard_rows, progress=False)


def dp_suite(store, root, collect_dir):
    """Everything the data-parallel tests need from 2 ranks, in one spawn (start-up is slow)."""
    root = Path(root)
    dp_train(store, root / "c2", root / "two.safetensors", "both", 10, None, 4, 32, 1)
    dp_train(store, root / "a", root / "a6.safetensors", "topk", 10, 6)   # stops after 6
    dp_train(store, root / "b", root / "b.safetensors")                   # resumes 1-rank's 3
    dp_collect(collect_dir, 10, 16)


# ----------------------------------------------------------------------------- latent parallel
LP_D_IN, LP_D_SAE = 12, 37


def lp_dense(seed=1):
    """The single-process dictionary the latent-parallel tests shard (float64, exact ties)."""
    sae = TopKSAE(LP_D_IN, LP_D_SAE, k=5, seed=seed, dtype="float64")
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(LP_D_SAE, generator=g, dtype=torch.float64) * 0.05)
        sae.b_dec.copy_(torch.randn(LP_D_IN, generator=g, dtype=torch.float64) * 0.1)
        sae.input_scale.fill_(1.5)
        # latents 3 (rank 0) and 30 (rank 1) are identical: exact ties across shards
        sae.W_enc[:, 30] = sae.W_enc[:, 3]
        sae.b_enc[30] = sae.b_enc[3]
    return sae


def lp_inputs(n=9, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, LP_D_IN, generator=g, dtype=torch.float64)


def lp_check(out_dir, ks, steps):
    for k in ks:
        _lp_check(Path(out_dir), k, steps)


def _lp_check(out_dir, k, steps):
    from pyinterp.distributed.latent import LatentParallelTopKSAE

    sae = lp_dense()
    sae.cfg.k = k
    lp = LatentParallelTopKSAE.from_dense(sae)
    lp.k = k
    x = lp_inputs().requires_grad_(True)
    values, indices = lp.encode(x)
    x_hat = lp(x)
    loss = lp.loss(x)
    loss.backward()
    res = {"values": values.detach(), "indices": indices, "x_hat": x_hat.detach(),
           "loss": loss.detach(), "x.grad": x.grad, "start": torch.tensor(lp.start),
           "stop": torch.tensor(lp.stop)}
    for name, p in lp.named_parameters():
        res[f"{name}.grad"] = p.grad
    # a few Adam steps with global-norm clipping
    opt = torch.optim.Adam(lp.parameters(), lr=1e-2)
    for s in range(steps):
        opt.zero_grad()
        lp.loss(lp_inputs(16, seed=100 + s)).backward()
        lp.clip_grad_norm_(0.5)
        opt.step()
    full = lp.to_dense()
    for name, t in full.state_dict().items():
        res[f"trained.{name}"] = t
    atomic_save_tensors(out_dir / f"k{k}_rank{D.rank()}.safetensors", res)
