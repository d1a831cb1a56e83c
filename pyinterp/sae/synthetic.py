"""Synthetic ground truth for every dictionary kind: planted sparse features, and how well a
trained dictionary recovers them.

- SAE: x = sum_i a_i f_i, a sparse (each feature on with probability p, magnitude U(0.5, 1.5)),
  f_i random unit directions (more features than dimensions: superposition).
- Transcoder: a planted sparse in->out map: x = sum_i a_i e_i, y = sum_i a_i u_i; the decoder
  must find the u_i. Skip transcoder: x also holds a dense Gaussian part z and y adds S x, so
  only W_skip = S (on the dense part) leaves the u_i for the decoder.
- Crosscoder: features shared across L layers: x^l = sum_i a_i f_i^l (feature i has one
  direction per layer, zero in the layers it skips); the decoder's per-layer rows must find it.
- CLT: features of layer l read x^l = sum a e^l and write to every later layer,
  y^j = sum_{l <= j} sum a u^{l->j}; the concatenated decoders of a latent must find
  [u^{l->l}, ..., u^{l->L-1}].

Recovery (Sharkey et al. 2022 style): for each planted feature the largest cosine similarity
with any learned decoder direction; report the fraction above 0.9 and the mean.

    python -m pyinterp.sae.synthetic --scale full --json out.json   # the figures in RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

KINDS = ("topk_sae", "batchtopk_sae", "relu_sae", "jumprelu_sae", "matryoshka_sae",
         "transcoder", "skip_transcoder", "crosscoder", "clt")


def unit_rows(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(n, d, generator=gen)
    return w / w.norm(dim=1, keepdim=True)


def sparse_codes(n: int, n_features: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """(n, n_features): each feature on with probability p, magnitude U(0.5, 1.5)."""
    on = torch.rand(n, n_features, generator=gen) < p
    return on * (0.5 + torch.rand(n, n_features, generator=gen))


def recovery(true_dirs: torch.Tensor, learned: torch.Tensor, threshold: float = 0.9) -> dict:
    """true_dirs (F, D), learned (M, D) (decoder directions, any norm): per planted feature
    the max cosine with a learned direction; the fraction above ``threshold`` and the mean."""
    t = true_dirs / true_dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    m = learned.detach().float() / learned.detach().float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = (t.float() @ m.T).max(dim=1).values
    return {"recovered": float((best > threshold).float().mean()),
            "mean_max_cosine": float(best.mean()), "threshold": threshold}


@dataclass
class Task:
    """A planted problem: ``batch(n)`` draws (inputs..., ) tensors for the dictionary's loss;
    ``truth`` (F, D) the directions to recover; ``learned(d)`` the dictionary's (M, D)."""

    batch: Callable[[int], tuple]
    truth: torch.Tensor
    learned: Callable
    expected_l0: float


def make_task(kind: str, *, n_features: int = 64, d: int = 32, p: float = 3 / 64, layers: int = 3,
              seed: int = 0) -> Task:
    """The planted problem for ``kind`` (see :data:`KINDS`)."""
    # streams of their own: a dictionary initialised with the same seed must not start on the
    # planted directions (random_directions would draw the same numbers)
    gen = torch.Generator().manual_seed(1_000_003 * seed + 7919)
    data_gen = torch.Generator().manual_seed(1_000_003 * seed + 104729)
    F = n_features
    if kind in ("transcoder", "skip_transcoder"):
        enc, dec = unit_rows(F, d, gen), unit_rows(F, d, gen)
        skip = torch.randn(d, d, generator=gen) * 0.3 / d ** 0.5 if kind == "skip_transcoder" else None

        def batch(n):
            a = sparse_codes(n, F, p, data_gen)
            x = a @ enc
            if skip is None:
                return x, a @ dec
            x = x + 0.3 * torch.randn(n, d, generator=data_gen)  # dense part: pins W_skip
            return x, a @ dec + x @ skip.T
        return Task(batch, dec, lambda m: m.W_dec, F * p)
    if kind == "crosscoder":
        dirs = unit_rows(F, layers * d, gen).view(F, layers, d)
        present = torch.rand(F, layers, generator=gen) < 0.7          # some features skip layers
        present[torch.arange(F), torch.randint(0, layers, (F,), generator=gen)] = True
        dirs = dirs * present[:, :, None]

        def batch(n):
            a = sparse_codes(n, F, p, data_gen)
            return tuple(a @ dirs[:, l] for l in range(layers))
        return Task(batch, dirs.reshape(F, -1),
                    lambda m: torch.cat(list(m.W_dec), 1), F * p)  # (d_sae, L d), layer by layer
    if kind == "clt":
        per = F // layers
        enc = [unit_rows(per, d, gen) for _ in range(layers)]
        # u^{l->j} for j >= l, with decaying weight for later targets
        dec = [[unit_rows(per, d, gen) / (1 + j - l) for j in range(layers)] for l in range(layers)]
        truth = torch.cat([torch.cat([dec[l][j] if j >= l else torch.zeros(per, d)
                                      for j in range(layers)], 1) for l in range(layers)])

        def batch(n):
            a = [sparse_codes(n, per, p, data_gen) for _ in range(layers)]
            xs = [a[l] @ enc[l] for l in range(layers)]
            ys = [sum(a[l] @ dec[l][j] for l in range(j + 1)) for j in range(layers)]
            return (*xs, *ys)

        def learned(m):
            rows = []
            for l in range(layers):
                full = torch.zeros(m.d_sae, layers, d)
                for j in range(l, layers):
                    full[:, j] = m.decoder(l, j).detach().float() / m.output_scale[j]
                rows.append(full.reshape(m.d_sae, -1))
            return torch.cat(rows)
        return Task(batch, truth, learned, per * p * layers)
    feats = unit_rows(F, d, gen)

    def batch(n):
        return (sparse_codes(n, F, p, data_gen) @ feats,)
    return Task(batch, feats, lambda m: m.W_dec, F * p)


def make_dictionary(kind: str, *, n_features: int = 64, d: int = 32, layers: int = 3,
                    expansion: float = 2.0, k: int = 3, seed: int = 0):
    """An untrained dictionary of ``kind`` sized for :func:`make_task`'s problem."""
    from pyinterp import sae

    m = int(n_features * expansion)
    if kind == "topk_sae":
        return sae.TopKSAE(d, m, k=k, seed=seed)
    if kind == "batchtopk_sae":
        return sae.BatchTopKSAE(d, m, k=k, seed=seed)
    if kind == "relu_sae":
        return sae.ReLUSAE(d, m, l1_coefficient=1.0, seed=seed)
    if kind == "jumprelu_sae":  # Gemma Scope 2's quadratic penalty towards the planted L0
        return sae.JumpReLUSAE(d, m, sparsity_loss="quadratic", target_l0=float(k),
                               l0_coefficient=1.0, bandwidth=0.05, init_l0=3.0 * k, seed=seed)
    if kind == "matryoshka_sae":
        # nested prefixes: as many latents as planted features, then the whole dictionary
        widths = sorted({min(n_features, m - 1), m})
        return sae.MatryoshkaBatchTopKSAE(d, m, k=k, matryoshka_widths=widths, seed=seed)
    if kind in ("transcoder", "skip_transcoder"):
        return sae.Transcoder(d, m, activation="topk", k=k, skip=kind == "skip_transcoder",
                              seed=seed)
    if kind == "crosscoder":
        return sae.Crosscoder(layers, d, m, activation="topk", k=k, seed=seed)
    if kind == "clt":  # k per layer: the planted problem has k features on per layer
        return sae.CrossLayerTranscoder(layers, d, max(1, m // layers), activation="topk", k=k,
                                        seed=seed)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


SCALES = {
    # rows per batch, steps, planted features (per layer for a CLT: n_features // 3), dims,
    # features on per row
    "tiny": dict(batch=256, steps=600, n_features=64, d=32, active=3),
    "full": dict(batch=512, steps=3000, n_features=512, d=128, active=6),
}


def run(kind: str, scale: str = "tiny", *, seed: int = 0, lr: float = 3e-3,
        progress: bool = False) -> dict:
    """Train ``kind`` on its planted problem at ``scale``; recovery, L0 and time."""
    from pyinterp.sae import SAETrainer, TrainConfig

    s = SCALES[scale]
    layers = 3
    k = s["active"]
    per = s["n_features"] // layers if kind == "clt" else s["n_features"]
    task = make_task(kind, n_features=s["n_features"], d=s["d"], p=k / per, layers=layers,
                     seed=seed)
    dic = make_dictionary(kind, n_features=s["n_features"], d=s["d"], layers=layers, k=k,
                          seed=seed)
    cfg = TrainConfig(steps=s["steps"], lr=lr, progress=progress, log_every=max(1, s["steps"] // 10),
                      dead_window_tokens=s["batch"] * 50, aux_check_every=25,
                      decay_fraction=0.3, seed=seed)
    t0 = time.perf_counter()
    tr = SAETrainer({"d": dic}, lambda: task.batch(s["batch"]), cfg)
    tr.run()
    seconds = time.perf_counter() - t0
    rec = recovery(task.truth, task.learned(dic))
    last = tr.history[-1]["d"]
    return {"kind": kind, "scale": scale, "planted_features": task.truth.shape[0],
            "latents": dic.n_latents, "expected_l0": task.expected_l0, "l0": last["l0"],
            "fvu": last["fvu"], **rec, "train_seconds": seconds, "steps": s["steps"]}


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kinds", nargs="*", default=list(KINDS))
    ap.add_argument("--scale", default="full", choices=sorted(SCALES))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = []
    for kind in a.kinds:
        r = run(kind, a.scale)
        rows.append(r)
        print(json.dumps(r), flush=True)
    if a.json:
        from pyinterp._files import atomic_write_json

        atomic_write_json(a.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
