"""TopK SAE training step: pyinterp.sae.TopKSAE (sparse ops) vs the dense pure-torch module
with the same maths (pyinterp.sae.reference.DenseTopKSAE), both forward + backward + Adam; and
SAELens's TopKSAE forward, plain vs pyinterp.sae.accelerate() (when sae-lens is installed).

Issue target (CPU, 2 threads, float32, N=4096, d_in=512, d_sae=16384, k=32): >= 3x faster.
"""
from __future__ import annotations

import torch

from pyinterp.bench.backends import auto_backend
from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row, peak_memory

FULL = (4096, 512, 16384, 32)
QUICK = (1024, 256, 4096, 32)


def _step_fn(module, loss_fn, x):
    opt = torch.optim.Adam(module.parameters(), lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        opt.step()
    return step


def _x(N, d_in, device):
    return torch.randn(N, d_in, generator=torch.Generator().manual_seed(0)).to(device)


def _step_calls(size, device):
    from pyinterp.sae import SAETrainer, TopKSAE, TrainConfig
    from pyinterp.sae.reference import DenseTopKSAE

    N, d_in, d_sae, k = size
    x = _x(N, d_in, device)
    sae = TopKSAE(d_in, d_sae, k=k, seed=0, device=device)
    dense = DenseTopKSAE.like(sae)
    # The library's whole step: also gradient clipping and the dead-latent counters.
    trainer = SAETrainer(TopKSAE(d_in, d_sae, k=k, seed=0, device=device), [],
                         TrainConfig(steps=10**9, lr=1e-5, progress=False))
    trainer.initialised = True
    return {"torch_dense": _step_fn(dense, dense.loss, x),
            "pyinterp": _step_fn(sae, lambda t: sae.loss(t).total, x),
            "pyinterp_trainer": lambda: trainer.train_step(x)}


def _sae_lens():
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sae_lens
    except ImportError:
        return None
    return sae_lens


def _saelens_calls(size, device):
    from pyinterp.sae import accelerate

    sae_lens = _sae_lens()
    N, d_in, d_sae, k = size
    x = _x(N, d_in, device)
    plain = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=str(device)))
    fast = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=str(device)))
    fast.load_state_dict(plain.state_dict())
    accelerate(fast)
    return {"sae_lens": lambda: plain(x), "pyinterp_accelerate": lambda: fast(x)}


def groups(device, quick=False) -> list[Group]:
    size = QUICK if quick else FULL
    N, d_in, d_sae, k = size
    repeat = 3 if quick else 5
    info = {"shape": f"N={N} d_in={d_in} d_sae={d_sae} k={k}", "dtype": "float32"}
    out = [Group("SAETrainStep", ("torch_dense", "pyinterp", "pyinterp_trainer"),
                 lambda: _step_calls(size, device), grad=True, repeat=repeat, info=info)]
    if _sae_lens() is not None:
        out.append(Group("SAELensTopKForward", ("sae_lens", "pyinterp_accelerate"),
                         lambda: _saelens_calls(size, device), repeat=repeat, info=info))
    return out


def run(args) -> list[Row]:
    device = torch.device(getattr(args, "device", "cpu"))
    quick = getattr(args, "quick", False)
    step_g, *saelens = groups(device, quick)
    shape = step_g.info["shape"]
    backend = auto_backend("topk_encode", device.type)
    fns, t = step_g.time(device)
    t_base = t["torch_dense"]
    rows = [
        Row("sae_train_step", shape, "float32", "torch dense (reference module)", t_base,
            peak_bytes=peak_memory(fns["torch_dense"], device)),
        Row("sae_train_step", shape, "float32", f"pyinterp TopKSAE [{backend}]", t["pyinterp"],
            baseline="torch dense", baseline_seconds=t_base,
            peak_bytes=peak_memory(fns["pyinterp"], device), extra={"backend": backend}),
        Row("sae_train_step", shape, "float32", f"pyinterp SAETrainer.train_step [{backend}]",
            t["pyinterp_trainer"], baseline="torch dense", baseline_seconds=t_base,
            extra={"backend": backend, "includes": "grad clipping, dead-latent counters"}),
    ]
    for group in saelens:
        _, t = group.time(device)
        rows += [
            Row("saelens_topk_forward", shape, "float32",
                f"sae_lens {_sae_lens().__version__}", t["sae_lens"]),
            Row("saelens_topk_forward", shape, "float32", "pyinterp.sae.accelerate(sae_lens)",
                t["pyinterp_accelerate"], baseline="sae_lens", baseline_seconds=t["sae_lens"]),
        ]
    return rows
