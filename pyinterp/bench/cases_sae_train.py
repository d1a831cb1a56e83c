"""TopK SAE training step: pyinterp.sae.TopKSAE (sparse ops) vs the dense pure-torch module
with the same maths (pyinterp.sae.reference.DenseTopKSAE), both forward + backward + Adam.

Issue target (CPU, 2 threads, float32, N=4096, d_in=512, d_sae=16384, k=32): >= 3x faster.
"""
from __future__ import annotations

import torch

from pyinterp.bench.backends import auto_backend
from pyinterp.bench.timing import Row, interleaved_medians, peak_memory

FULL = (4096, 512, 16384, 32)
QUICK = (1024, 256, 4096, 32)


def _step_fn(module, loss_fn, x):
    opt = torch.optim.Adam(module.parameters(), lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        opt.step()
    return step


def run(args) -> list[Row]:
    from pyinterp.sae import TopKSAE
    from pyinterp.sae.reference import DenseTopKSAE

    device = torch.device(getattr(args, "device", "cpu"))
    quick = getattr(args, "quick", False)
    N, d_in, d_sae, k = QUICK if quick else FULL
    repeat = 3 if quick else 5
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, d_in, generator=gen).to(device)
    sae = TopKSAE(d_in, d_sae, k=k, seed=0, device=device)
    dense = DenseTopKSAE.like(sae)
    backend = auto_backend("topk_encode", x.device.type)
    shape = f"N={N} d_in={d_in} d_sae={d_sae} k={k}"
    base_step = _step_fn(dense, dense.loss, x)
    ours_step = _step_fn(sae, lambda t: sae.loss(t).total, x)
    # The library's whole step: also gradient clipping and the dead-latent counters.
    from pyinterp.sae import SAETrainer, TrainConfig

    trainer = SAETrainer(TopKSAE(d_in, d_sae, k=k, seed=0, device=device), [],
                         TrainConfig(steps=10**9, lr=1e-5, progress=False))
    trainer.initialised = True
    t = interleaved_medians({"base": base_step, "ours": ours_step,
                             "trainer": lambda: trainer.train_step(x)}, repeat, device=device)
    t_base, t_ours, t_trainer = t["base"], t["ours"], t["trainer"]
    rows = [
        Row("sae_train_step", shape, "float32", "torch dense (reference module)", t_base,
            peak_bytes=peak_memory(base_step, device)),
        Row("sae_train_step", shape, "float32", f"pyinterp TopKSAE [{backend}]", t_ours,
            baseline="torch dense", baseline_seconds=t_base,
            peak_bytes=peak_memory(ours_step, device), extra={"backend": backend}),
        Row("sae_train_step", shape, "float32", f"pyinterp SAETrainer.train_step [{backend}]",
            t_trainer, baseline="torch dense", baseline_seconds=t_base,
            extra={"backend": backend, "includes": "grad clipping, dead-latent counters"}),
    ]
    rows += _saelens_rows(x, N, d_in, d_sae, k, repeat, device)
    return rows


def _saelens_rows(x, N, d_in, d_sae, k, repeat, device) -> list[Row]:
    """SAELens TopKSAE.forward, plain vs pyinterp.sae.accelerate(), when sae-lens is installed."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sae_lens
    except ImportError:
        return []
    from pyinterp.sae import accelerate

    plain = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=str(device)))
    fast = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=str(device)))
    fast.load_state_dict(plain.state_dict())
    accelerate(fast)

    def fwd(m):
        def f():
            with torch.no_grad():
                m(x)
        return f
    t = interleaved_medians({"plain": fwd(plain), "fast": fwd(fast)}, repeat, device=device)
    shape = f"N={N} d_in={d_in} d_sae={d_sae} k={k}"
    return [
        Row("saelens_topk_forward", shape, "float32", f"sae_lens {sae_lens.__version__}",
            t["plain"]),
        Row("saelens_topk_forward", shape, "float32", "pyinterp.sae.accelerate(sae_lens)",
            t["fast"], baseline="sae_lens", baseline_seconds=t["plain"]),
    ]
