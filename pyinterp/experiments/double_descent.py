"""Superposition, Memorization and Double Descent (Henighan et al. 2023).

Definitions (the paper's):
  * n sparse features (x_i = 0 with probability S, else U[0, 1]), each example rescaled to
    ‖x‖ = 1; a *finite* training set of T examples; m = 2 hidden dimensions;
  * the ReLU-output model h = W x, x' = ReLU(Wᵀ h + b), uniform importance, MSE;
  * full-batch AdamW with linear warm-up then cosine decay to 0, weight decay 1e-2;
  * data-point dimensionality D_{X_i} = ‖h_i‖² / Σ_j (ĥ_i · h_j)² with h_i = W X_i, and feature
    dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)².
The paper (n = 10,000, S = 0.999, 50,000 steps) finds that small T stores the training points
(a T-gon of hidden vectors, features messy), large T stores features (a pentagon), and the
test loss peaks in between. Each T (all seeds batched) is one checkpointed step.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Dict, Tuple

import torch

from pyinterp._progress import progress
from pyinterp.experiments import toy
from pyinterp.experiments._experiment import BaseConfig, Experiment

NAME = "double-descent"
TITLE = "Superposition, Memorization and Double Descent"
CITATION = ("Henighan et al. 2023, <i>Superposition, Memorization, and Double Descent</i>, Transformer "
            "Circuits Thread, <a href='https://transformer-circuits.pub/2023/toy-double-descent/index.html'>"
            "transformer-circuits.pub/2023/toy-double-descent</a>")


@dataclasses.dataclass
class Config(BaseConfig):
    n: int = 10_000
    m: int = 2
    sparsity: float = 0.999
    dataset_sizes: Tuple[int, ...] = (3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000)
    seeds: int = 3
    steps: int = 50_000
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05
    test_size: int = 10_000

    SCALES: ClassVar[Dict[str, dict]] = {
        "quick": dict(n=200, sparsity=0.97, dataset_sizes=(3, 5, 10, 20, 40, 80, 150, 300, 600, 1200, 2500),
                      seeds=3, steps=2000, lr=1e-2, test_size=3000),
        "tiny": dict(n=40, sparsity=0.9, dataset_sizes=(3, 6, 12, 25, 50, 100, 200, 400),
                     seeds=2, steps=300, lr=3e-2, test_size=1000),
    }


def sample_unit(R: int, T: int, n: int, S: float, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """(R, T, n) sparse examples rescaled to ‖x‖ = 1 (all-zero draws are redrawn)."""
    x = toy.sample_sparse(R, T, n, torch.full((R,), 1 - S), gen, device)
    while True:
        zero = x.norm(dim=-1) == 0
        if not bool(zero.any()):
            break
        fresh = toy.sample_sparse(R, T, n, torch.full((R,), 1 - S), gen, device)
        x = torch.where(zero[..., None], fresh, x)
    return x / x.norm(dim=-1, keepdim=True)


def lr_at(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 (a multiplier of the base lr)."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * p))


def _train_T(cfg: Config, T: int, device: str, test: torch.Tensor) -> dict:
    R, n, m = cfg.seeds, cfg.n, cfg.m
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + T)
    X = sample_unit(R, T, n, cfg.sparsity, gen, device)  # each seed its own data set
    W = toy.xavier_normal(R, m, n, gen, device).requires_grad_(True)
    b = torch.zeros(R, n, device=device, requires_grad=True)
    opt = torch.optim.AdamW([W, b], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg.steps, max(1, int(cfg.warmup_frac * cfg.steps))))
    ones = torch.ones(R, n, device=device)
    for _ in progress(range(cfg.steps), desc=f"double descent T={T}", unit="step"):
        loss = toy.loss_per_model(W, b, X, ones).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        train = toy.loss_per_model(W, b, X, ones)
        te = test.to(device).expand(R, -1, -1)
        test_loss = toy.loss_per_model(W, b, te, ones)
        H = torch.bmm(X, W.transpose(1, 2))  # (R, T, m) hidden vectors of the training data
    return {"W": W.detach().cpu(), "b": b.detach().cpu(), "H": H.cpu(), "train_loss": train.cpu(),
            "test_loss": test_loss.cpu()}


def find_peak(loss: torch.Tensor, margin: float = 1.05):
    """Index of the highest interior point that rises ``margin``× above the best loss before it
    and is followed by a lower loss at the largest T; None if the curve has no such bump."""
    best = None
    for j in range(1, len(loss) - 1):
        if loss[j] > margin * loss[:j].min() and loss[-1] < loss[j]:
            if best is None or loss[j] > loss[best]:
                best = j
    return best


def _topk_mean(D: torch.Tensor, k: int = 5) -> float:
    k = min(k, D.numel())
    return float(D.flatten().topk(k).values.mean())


def run(config: Config, out_dir, *, fresh: bool = False) -> dict:
    from pyinterp.experiments.report import new_figure

    cfg = config
    ex = Experiment(NAME, TITLE, CITATION, cfg, out_dir, fresh=fresh, summary=(
        "Toy models trained on finite data sets of T examples. Small data sets are memorised "
        "(the hidden vectors of the training points are in superposition), large ones make the "
        "model store features; between the regimes the test loss peaks: double descent."))
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    test = sample_unit(1, cfg.test_size, cfg.n, cfg.sparsity, gen)
    Ts = list(cfg.dataset_sizes)
    res = {T: ex.step(f"T{T}", lambda T=T: _train_T(cfg, T, ex.device, test)) for T in Ts}

    test_loss = torch.stack([res[T]["test_loss"] for T in Ts])  # (len(Ts), seeds)
    train_loss = torch.stack([res[T]["train_loss"] for T in Ts])
    mean_test = test_loss.mean(1)
    peak = find_peak(mean_test)
    Tt = torch.tensor(Ts, dtype=torch.float32)

    fig, ax = new_figure(size=(6, 4))
    for s in range(cfg.seeds):
        ax.plot(Ts, test_loss[:, s].numpy(), "o", ms=3, color="#9bb7d4", alpha=0.7)
    ax.plot(Ts, mean_test.numpy(), "-o", color="#1f4e99", label="test loss (mean over seeds)")
    ax.plot(Ts, train_loss.mean(1).numpy(), "--", color="#999", label="training loss")
    if peak is not None:
        ax.axvline(Ts[peak], color="#c0392b", ls=":", label=f"peak T={Ts[peak]}")
    ax.axvline(10 / (1 - cfg.sparsity), color="#2a9d8f", ls="-.", lw=1, label="T(1−S)=10")
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("training set size T"); ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    nonmono = bool((mean_test[1:] > mean_test[:-1] * 1.05).any())
    c_peak = ex.check("test loss is not monotone in T (double descent)", peak is not None,
                      f"mean test loss by T: {[round(float(v), 4) for v in mean_test]}; "
                      + (f"peak at T={Ts[peak]}" if peak is not None else "no interior peak found"))
    ex.figure(fig, "test_loss.png", "Test loss against training set size",
              "Test loss first falls, then rises to a peak between the memorising and the generalising "
              "regime, then falls again (double descent); the paper's generalisation starts near T(1−S) ≈ 10.",
              check=c_peak, headline=True)

    # hidden vectors and feature vectors on each side of the peak
    pi = peak if peak is not None else len(Ts) // 2
    picks = sorted({min(1, pi), pi, len(Ts) - 1})
    fig, axes = new_figure(len(picks), 2, size=(3.0, 3.0))
    for c, j in enumerate(picks):
        T = Ts[j]
        H = res[T]["H"][0]  # (T, m) seed 0
        W = res[T]["W"][0]  # (m, n)
        a = axes[0][c]
        for h in H[: min(T, 300)]:
            a.plot([0, h[0]], [0, h[1]], "-", lw=0.6, color="#1f4e99", alpha=0.6)
        a.set_title(f"T={T}: training hidden vectors", fontsize=8); a.set_aspect("equal")
        a = axes[1][c]
        norms = W.norm(dim=0)
        top = norms.argsort(descending=True)[:50]
        for i in top:
            a.plot([0, W[0, i]], [0, W[1, i]], "-", lw=0.8, color="#c0392b", alpha=0.7)
        a.set_title(f"T={T}: feature vectors (top 50 by norm)", fontsize=8); a.set_aspect("equal")
    ex.figure(fig, "hidden_vectors.png", "Training-data hidden vectors and feature vectors, each side of the peak",
              "Small T: the training points' hidden vectors form a regular T-gon, the feature vectors are messy. "
              "Large T: the hidden vectors of the data are messy, the features form a regular polygon (pentagon).")

    # data-point vs feature dimensionality
    dd, fd = [], []
    for T in Ts:
        H = res[T]["H"]  # (R, T, m) -> columns
        dd.append(toy.fractional_dimensionality(H.transpose(1, 2)))  # (R, T)
        fd.append(toy.fractional_dimensionality(res[T]["W"]))  # (R, n)
    top_data = torch.tensor([_topk_mean(d) for d in dd])
    top_feat = torch.tensor([_topk_mean(f) for f in fd])
    fig, ax = new_figure(size=(6, 4))
    for j, T in enumerate(Ts):
        ax.scatter([T] * dd[j].numel(), dd[j].flatten().numpy(), s=3, color="#1f4e99", alpha=0.3)
        ax.scatter([T * 1.08] * fd[j].numel(), fd[j].flatten().numpy(), s=3, color="#c0392b", alpha=0.15)
    ax.plot(Ts, top_data.numpy(), "-", color="#1f4e99", label="data points (top-5 mean)")
    ax.plot(Ts, top_feat.numpy(), "-", color="#c0392b", label="features (top-5 mean)")
    ax.plot(Ts, (cfg.m / Tt).clamp(max=1).numpy(), ":", color="#1f4e99", lw=1, label="m/T (T-gon)")
    ax.set_xscale("log"); ax.set_xlabel("training set size T"); ax.set_ylabel("dimensionality"); ax.set_ylim(-0.05, 1.1)
    ax.legend(fontsize=7)
    swap = bool(top_data[0] > top_feat[0]) and bool(top_feat[-1] > top_data[-1])
    ex.figure(fig, "dimensionality.png", "Data-point vs feature dimensionality against T",
              "Small T: training data points have large dimensionality (m/T each, a T-gon) and features near 0; "
              "large T: features get the dimensionality (2/5 for a pentagon) and data points lose it.",
              check=ex.check("memorisation gives way to features", swap,
                             f"top-5 data-point D: {float(top_data[0]):.2f} at T={Ts[0]} -> {float(top_data[-1]):.2f} "
                             f"at T={Ts[-1]}; top-5 feature D: {float(top_feat[0]):.2f} -> {float(top_feat[-1]):.2f}"))

    metrics = {"dataset_sizes": Ts, "test_loss": test_loss.tolist(), "mean_test_loss": mean_test.tolist(),
               "train_loss": train_loss.tolist(), "peak_T": Ts[peak] if peak is not None else None,
               "non_monotone": nonmono, "top5_data_dim": top_data.tolist(), "top5_feature_dim": top_feat.tolist()}
    full = cfg.scale == "full"
    ex.compare("peak of test loss", "between memorisation and generalisation, T(1−S) of order 1–10 (n=10,000, S=0.999)",
               f"T={Ts[peak]} (T(1−S)={Ts[peak] * (1 - cfg.sparsity):.2g})" if peak is not None else "no peak",
               comparable=full, note="the peak moves with n and S" if not full else "", key=True)
    ex.compare("small-T data-point dimensionality", "m/T (T-gon)",
               f"top-5 mean {float(top_data[0]):.2f} at T={Ts[0]} (m/T={cfg.m / Ts[0]:.2f})", key=True)
    ex.compare("large-T feature geometry", "pentagon (D_i = 2/5)", f"top-5 mean feature D {float(top_feat[-1]):.2f}",
               comparable=full, note="" if full else "smaller n and S")
    if cfg.n != 10_000 or cfg.sparsity != 0.999:
        ex.setting("features n, sparsity S", "10,000, 0.999", f"{cfg.n}, {cfg.sparsity}",
                   "fits the time budget; smaller n and S shift the peak (to about T(1−S) ~ a few)")
    if cfg.steps != 50_000 or cfg.lr != 1e-3:
        ex.setting("training", "50,000 full-batch AdamW steps, lr 1e-3", f"{cfg.steps} steps, lr {cfg.lr:g}",
                   "time budget: fewer steps with a larger learning rate")
    ex.setting("data sets per T", "several seeds", f"{cfg.seeds} seeds, test set of {cfg.test_size}", "")
    return ex.finish(metrics)
