"""Toy Models of Superposition (Elhage et al. 2022), reproduced with batched toy models.

Definitions (the paper's, exactly):
  * features x_i = 0 with probability S (sparsity), else U[0, 1]; importance I_i;
  * ReLU-output model h = W x, x' = ReLU(Wᵀ W x + b), loss Σ_i I_i (x_i − x'_i)²;
  * dimensions per feature D* = m / ‖W‖_F²;
  * feature dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²;
  * superposition (interference) of feature i: Σ_{j≠i} (Ŵ_i · W_j)².
Settings: AdamW lr 1e-3, batch 1024, Xavier-normal W, b = 0, 10,000 steps (``full``).

Parts (each a checkpointed step): (1) n=20, m=5, I=0.7^i across sparsity: WᵀW and feature
norms; (2) the n=2, m=1 phase diagram over relative importance 0.1–10 and density 1–0.01,
several seeds per point keeping the lowest loss; (3) D* and D_i against 1/(1−S) with the sticky
fractions; (4) the pentagon for n=5, m=2.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Dict, Tuple

import torch

from pyinterp.experiments import toy
from pyinterp.experiments._experiment import BaseConfig, Experiment, fmt

NAME = "superposition"
TITLE = "Toy Models of Superposition"
CITATION = ("Elhage et al. 2022, <i>Toy Models of Superposition</i>, Transformer Circuits Thread, "
            "<a href='https://transformer-circuits.pub/2022/toy_model/index.html'>"
            "transformer-circuits.pub/2022/toy_model</a>")

STICKY = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8)
STICKY_NAMES = ("1", "3/4 tetrahedron", "2/3 triangle", "1/2 antipodal", "2/5 pentagon", "3/8 square antiprism")


@dataclasses.dataclass
class Config(BaseConfig):
    steps: int = 10_000
    lr: float = 1e-3
    batch: int = 1024
    # (1) importance/sparsity sweep
    sweep_n: int = 20
    sweep_m: int = 5
    sweep_sparsities: Tuple[float, ...] = (0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999)
    # (2) phase diagram n=2, m=1
    phase_points: int = 12  # grid is points x points
    phase_seeds: int = 5
    # (3) dimensionality
    dim_n: int = 200
    dim_m: int = 20
    dim_models: int = 40
    dim_max_inv_density: float = 1000.0
    # (4) pentagon
    pentagon_sparsity: float = 0.9
    pentagon_seeds: int = 8

    SCALES: ClassVar[Dict[str, dict]] = {
        "quick": dict(steps=2500, lr=5e-3, phase_points=8, phase_seeds=3, dim_n=80, dim_m=8,
                      dim_models=20, dim_max_inv_density=50.0, pentagon_seeds=6),
        "tiny": dict(steps=300, lr=1e-2, batch=256, sweep_sparsities=(0.0, 0.9, 0.99, 0.997),
                     phase_points=5, phase_seeds=2, dim_n=30, dim_m=5, dim_models=6,
                     dim_max_inv_density=100.0, pentagon_seeds=4),
    }


def _train(cfg: Config, ex: Experiment, n, m, importance, density, seed, desc):
    return toy.train_toy_models(n, m, importance, density, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr,
                                seed=seed, device=ex.device, desc=desc)


def _sweep(cfg, ex):
    S = torch.tensor(cfg.sweep_sparsities, dtype=torch.float32)
    imp = (0.7 ** torch.arange(cfg.sweep_n, dtype=torch.float32)).repeat(len(S), 1)
    r = _train(cfg, ex, cfg.sweep_n, cfg.sweep_m, imp, 1 - S, cfg.seed, "superposition: sparsity sweep")
    return {"W": r["W"], "b": r["b"], "loss": r["loss"], "S": S}


def _phase(cfg, ex):
    P, R = cfg.phase_points, cfg.phase_seeds
    rel = torch.logspace(-1, 1, P)  # importance of feature 2 relative to feature 1
    dens = torch.logspace(0, -2, P)  # feature density 1 − S
    rr, dd = torch.meshgrid(rel, dens, indexing="ij")
    imp = torch.stack([torch.ones_like(rr), rr], -1).reshape(-1, 2).repeat(R, 1)  # (R*P*P, 2)
    den = dd.reshape(-1).repeat(R)
    r = _train(cfg, ex, 2, 1, imp, den, cfg.seed + 1, "superposition: phase diagram")
    loss = r["loss"].reshape(R, P * P)
    best = loss.argmin(0)  # keep the best seed per point: m = 1 is hard to optimise
    W = r["W"].reshape(R, P * P, 1, 2)[best, torch.arange(P * P)]
    return {"W": W.reshape(P, P, 2), "loss": loss.min(0).values.reshape(P, P), "rel": rel, "density": dens}


def _dimensionality(cfg, ex):
    K = cfg.dim_models
    inv = torch.logspace(0, math.log10(cfg.dim_max_inv_density), K)  # 1/(1−S)
    imp = torch.ones(K, cfg.dim_n)
    r = _train(cfg, ex, cfg.dim_n, cfg.dim_m, imp, 1 / inv, cfg.seed + 2, "superposition: dimensionality")
    return {"W": r["W"], "inv_density": inv, "loss": r["loss"]}


def _pentagon(cfg, ex):
    R = cfg.pentagon_seeds
    imp = torch.ones(R, 5)
    den = torch.full((R,), 1 - cfg.pentagon_sparsity)
    r = _train(cfg, ex, 5, 2, imp, den, cfg.seed + 3, "superposition: pentagon")
    best = int(r["loss"].argmin())
    return {"W": r["W"][best], "loss": r["loss"], "best": best}


def classify_phase(W: torch.Tensor, thresh: float = 0.5) -> torch.Tensor:
    """W: (..., 2) of n=2, m=1 models -> 0 feature 2 ignored, 1 superposition, 2 feature 2 only, 3 neither."""
    rep = W.abs() > thresh
    c = torch.full(W.shape[:-1], 3, dtype=torch.long)
    c[rep[..., 0] & ~rep[..., 1]] = 0
    c[rep[..., 0] & rep[..., 1]] = 1
    c[~rep[..., 0] & rep[..., 1]] = 2
    return c


def run(config: Config, out_dir, *, fresh: bool = False) -> dict:
    from matplotlib.colors import ListedColormap

    from pyinterp.experiments.report import new_figure

    cfg = config
    ex = Experiment(NAME, TITLE, CITATION, cfg, out_dir, fresh=fresh, summary=(
        "ReLU-output toy models x' = ReLU(WᵀWx + b) compress n sparse features into m &lt; n "
        "dimensions. As features get sparser the models store more features than dimensions "
        "(superposition), in regular geometric arrangements."))
    metrics = {}

    # (1) WᵀW and feature norms across sparsity
    sw = ex.step("sweep", lambda: _sweep(cfg, ex))
    W, S = sw["W"], sw["S"]
    norms = toy.feature_norms(W)  # (K, n)
    interf = toy.interference(W)
    n_rep = (norms > 0.5).sum(-1)
    K = len(S)
    fig, axes = new_figure(K, 2, size=(2.1, 2.2))
    for k in range(K):
        ax = axes[0][k]
        ax.imshow((W[k].T @ W[k]).numpy(), cmap="RdBu", vmin=-1, vmax=1)
        ax.set_title(f"S={float(S[k]):g}", fontsize=9)
        ax.set_xticks([]); ax.set_yticks([])
        ax = axes[1][k]
        sup = interf[k].clamp(0, 1).numpy()
        colors = [(0.15 + 0.8 * s, 0.2, 0.9 - 0.7 * s) for s in sup]
        ax.barh(range(cfg.sweep_n), norms[k].numpy(), color=colors)
        ax.invert_yaxis(); ax.set_xlim(0, 1.3); ax.set_yticks([])
        ax.set_xlabel("‖W_i‖", fontsize=8)
    axes[0][0].set_ylabel("WᵀW")
    axes[1][0].set_ylabel("features (importance ↓)")
    c1 = ex.check("dense: at most m features represented",
                  int(n_rep[0]) <= cfg.sweep_m,
                  f"S=0: {int(n_rep[0])} of {cfg.sweep_n} features have ‖W_i‖>0.5 (m={cfg.sweep_m})")
    c2 = ex.check("sparse: more features than dimensions",
                  int(n_rep[-1]) > cfg.sweep_m,
                  f"S={float(S[-1]):g}: {int(n_rep[-1])} features represented in m={cfg.sweep_m} dimensions")
    ex.figure(fig, "sweep.png", "WᵀW and feature norms across sparsity (n=20, m=5, I=0.7^i)",
              "Dense features: WᵀW is a projection onto the m most important features (identity block), "
              "the rest have ‖W_i‖≈0. As S grows, more features get ‖W_i‖≈1 and off-diagonal WᵀW "
              "entries appear; bar colour goes from blue (orthogonal) to red (in superposition).",
              check=ex.check("superposition grows with sparsity", c1.passed and c2.passed and
                             bool((n_rep[1:] >= n_rep[:-1] - 1).all()),
                             f"features represented per sparsity: {n_rep.tolist()}"), headline=True)
    metrics["sweep"] = {"sparsity": S.tolist(), "features_represented": n_rep.tolist(),
                        "loss": sw["loss"].tolist()}

    # (2) phase diagram
    ph = ex.step("phase", lambda: _phase(cfg, ex))
    cls = classify_phase(ph["W"])  # (P rel, P density)
    rel, dens = ph["rel"], ph["density"]
    fig, ax = new_figure(size=(5.5, 4.5))
    cmap = ListedColormap(["#4a78b8", "#d9822b", "#5aa05a", "#bbbbbb"])
    ax.pcolormesh(rel.numpy(), dens.numpy(), cls.T.numpy(), cmap=cmap, vmin=-0.5, vmax=3.5, shading="nearest")
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("relative importance of feature 2"); ax.set_ylabel("feature density 1−S")
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=c, label=l) for c, l in zip(
        cmap.colors, ["feature 2 not represented", "superposition (antipodal)", "feature 2 gets the dimension",
                      "neither"])], fontsize=7, loc="lower left")
    dense_row = cls[:, 0]
    low_ok = (dense_row[rel < 0.8] == 0).float().mean().item()
    high_ok = (dense_row[rel > 1.25] == 2).float().mean().item()
    near1 = (rel > 0.45) & (rel < 2.2)
    sparse_ok = (cls[near1, -1] == 1).float().mean().item()
    pc = ex.check("phase diagram has all three phases in the right places",
                  low_ok >= 0.8 and high_ok >= 0.8 and sparse_ok >= 0.8,
                  f"dense row: 'feature 2 ignored' for r<0.8 in {low_ok:.0%}, 'feature 2 only' for r>1.25 in "
                  f"{high_ok:.0%}; sparsest row, r in [0.45, 2.2]: superposition in {sparse_ok:.0%}")
    ex.figure(fig, "phase_diagram.png", "Phase diagram, n=2 features in m=1 dimension",
              "Dense features: only the more important feature gets the dimension (blue left, green right). "
              "Sparse features with comparable importance: both are stored antipodally (superposition, orange). "
              "The boundaries are sharp (a first-order phase change).", check=pc)
    metrics["phase"] = {"relative_importance": rel.tolist(), "density": dens.tolist(),
                        "class": cls.tolist(), "dense_low_ok": low_ok, "dense_high_ok": high_ok,
                        "sparse_superposition": sparse_ok}

    # (3) D* and feature dimensionality
    dm = ex.step("dimensionality", lambda: _dimensionality(cfg, ex))
    Wd, inv = dm["W"], dm["inv_density"]
    dstar = toy.dimensions_per_feature(Wd)
    Di = toy.fractional_dimensionality(Wd)  # (K, n)
    rep = toy.feature_norms(Wd) > 0.5
    fig, (a1, a2) = new_figure(2, 1, size=(5.0, 3.8))
    a1.plot(inv.numpy(), dstar.numpy(), "o-", ms=3)
    for y in (1.0, 0.5):
        a1.axhline(y, color="gray", ls=":", lw=1)
    a1.set_xscale("log"); a1.set_xlabel("1/(1−S)"); a1.set_ylabel("D* = m/‖W‖_F²")
    a1.set_title(f"dimensions per feature (n={cfg.dim_n}, m={cfg.dim_m})", fontsize=10)
    xs = inv[:, None].expand_as(Di)[rep]
    a2.scatter(xs.numpy(), Di[rep].numpy(), s=4, alpha=0.5)
    for y, lab in zip(STICKY, STICKY_NAMES):
        a2.axhline(y, color="gray", ls=":", lw=0.8)
        a2.text(inv[0].item(), y + 0.01, lab, fontsize=6, color="gray")
    a2.set_xscale("log"); a2.set_ylim(-0.05, 1.1)
    from matplotlib.ticker import NullFormatter

    for a in (a1, a2):  # log axes over ~1.5 decades label their minor ticks, which then overlap
        a.xaxis.set_minor_formatter(NullFormatter())
    a2.set_xlabel("1/(1−S)"); a2.set_ylabel("feature dimensionality D_i")
    plateau1 = float(dstar[0])
    # The listed sticky fractions are all >= 3/8, so they can only show in models whose features
    # still have D_i of that size: the transition models with 0.35 <= D* <= 0.95. (Past it, every
    # feature sits near m/n and the clusters leave the plotted fractions.)
    window = (dstar >= 0.35) & (dstar <= 0.95)
    if bool(window.any()):
        a2.axvspan(float(inv[window].min()), float(inv[window].max()), color="#f4d03f", alpha=0.2, lw=0,
                   label="models with 0.35 ≤ D* ≤ 0.95 (the check)")
        a2.legend(fontsize=6, loc="upper right")
    d_sorted = Di[rep & window[:, None]]
    near = torch.stack([(d_sorted - f).abs() < 0.03 for f in STICKY]).any(0)
    near_frac = near.float().mean().item() if d_sorted.numel() else 0.0
    # chance: share of [0.35, 1] within 0.03 of some sticky fraction (a uniform spread's hit rate)
    grid = torch.linspace(0.35, 1.0, 651)
    chance = torch.stack([(grid - f).abs() < 0.03 for f in STICKY]).any(0).float().mean().item()
    near_half = ((dstar - 0.5).abs() < 0.06).sum().item()
    dc = ex.check("D* starts at 1 and falls below 1 with sparsity",
                  0.85 <= plateau1 <= 1.15 and float(dstar.min()) < 0.6,
                  f"D* = {plateau1:.2f} at 1/(1−S)=1, min {float(dstar.min()):.2f}; "
                  f"{near_half} of {len(dstar)} models have D* within 0.06 of 1/2")
    fc = ex.check("feature dimensionalities cluster at the sticky fractions",
                  near_frac > 1.5 * chance,
                  f"{near_frac:.0%} of the {d_sorted.numel()} represented features of the {int(window.sum())} "
                  f"models with 0.35 <= D* <= 0.95 lie within 0.03 of 1, 3/4, 2/3, 1/2, 2/5 or 3/8 "
                  f"(a uniform spread over [0.35, 1] would give {chance:.0%}; needs 1.5x that)")
    ex.figure(fig, "dimensionality.png", "Dimensions per feature and feature dimensionality vs 1/(1−S)",
              "D* is 1 for dense features, then falls with plateaus ('sticky' at 1 and 1/2); individual "
              "features' D_i cluster at 3/4, 2/3, 1/2, 2/5, 3/8 (tetrahedra, triangles, antipodal pairs, "
              "pentagons, square antiprisms).", check=ex.check(
                  "D* and D_i show the paper's structure", dc.passed and fc.passed, f"{dc.detail}; {fc.detail}"))
    metrics["dimensionality"] = {"inv_density": inv.tolist(), "D_star": dstar.tolist(),
                                 "D_i_near_sticky_fraction": near_frac, "models_D_star_near_half": near_half}

    # (4) pentagon
    pg = ex.step("pentagon", lambda: _pentagon(cfg, ex))
    Wp = pg["W"]  # (2, 5)
    ang = torch.atan2(Wp[1], Wp[0])
    order = ang.argsort()
    gaps = torch.diff(torch.cat([ang[order], ang[order][:1] + 2 * math.pi])) * 180 / math.pi
    pnorms = Wp.norm(dim=0)
    fig, ax = new_figure(size=(4.2, 4.2))
    for i in range(5):
        ax.plot([0, Wp[0, i]], [0, Wp[1, i]], "-o", ms=4)
    lim = float(pnorms.max()) * 1.2 + 1e-3
    ax.set_xlim(-lim, lim); ax.set_ylim(-lim, lim); ax.set_aspect("equal"); ax.axhline(0, c="#ddd"); ax.axvline(0, c="#ddd")
    ax.set_title(f"W columns, n=5, m=2, S={cfg.pentagon_sparsity}")
    pent = bool((pnorms > 0.5).all()) and float((gaps - 72).abs().max()) < 12
    ex.figure(fig, "pentagon.png", "Pentagon: 5 features in 2 dimensions",
              "With sparse, equally important features the 5 columns of W form a regular pentagon: "
              "equal norms, 72° apart.", check=ex.check(
                  "pentagon geometry", pent,
                  f"norms {[round(float(v), 2) for v in pnorms]}, angular gaps {[round(float(g)) for g in gaps]}°"))
    metrics["pentagon"] = {"norms": pnorms.tolist(), "gaps_deg": gaps.tolist()}

    ex.compare("features represented, n=20, m=5, densest vs sparsest", "m (5) when dense; many more than m when very sparse",
               f"{int(n_rep[0])} at S=0; {int(n_rep[-1])} at S={float(S[-1]):g}", comparable=True, key=True)
    ex.compare("D* at 1/(1−S)=1", "1", fmt(plateau1), comparable=True)
    ex.compare("sticky values of D*", "1 and 1/2 (plateaus)", f"{near_half} models within 0.06 of 1/2",
               comparable=cfg.scale == "full", note="fewer, shorter-trained models" if cfg.scale != "full" else "")
    ex.compare("D_i clusters", "3/4, 2/3, 1/2, 2/5, 3/8, 0", f"{near_frac:.0%} within 0.03 of these",
               comparable=cfg.scale == "full", note="smaller n, m" if cfg.scale != "full" else "", key=True)
    ex.compare("pentagon angular gaps", "72° each", ", ".join(f"{float(g):.0f}°" for g in gaps))
    ex.compare("phase change n=2, m=1", "first-order; superposition at low density, r near 1",
               f"superposition in {sparse_ok:.0%} of the sparsest row near r=1")
    if cfg.steps != 10_000 or cfg.lr != 1e-3:
        ex.setting("training", "AdamW lr 1e-3, 10,000 steps", f"AdamW lr {cfg.lr:g}, {cfg.steps} steps",
                   "scale " + cfg.scale + ": fewer steps, larger learning rate to converge in time")
    if cfg.batch != 1024:
        ex.setting("batch", 1024, cfg.batch, "tiny scale")
    ex.setting("dimensionality sweep", "large n and m, many sparsities",
               f"n={cfg.dim_n}, m={cfg.dim_m}, {cfg.dim_models} sparsities up to 1/(1−S)={cfg.dim_max_inv_density:g}",
               "fits the time budget of this scale")
    ex.setting("phase diagram grid", "fine grid, several seeds per point",
               f"{cfg.phase_points}×{cfg.phase_points}, {cfg.phase_seeds} seeds (best kept)", "")
    return ex.finish(metrics)
