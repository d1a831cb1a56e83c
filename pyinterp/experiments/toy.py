"""Batched ReLU-output toy models (Elhage et al. 2022, "Toy Models of Superposition").

Many independent models are trained at once as one tensor: model k has W[k]: (m, n) and
b[k]: (n,), and every operation is a batched matmul over the model index, so a sweep over
sparsity, importance or seeds is one training loop.

    h = W x,   x' = ReLU(Wᵀ W x + b)            (the paper's ReLU-output model)
    loss_k = E_x Σ_i I_ki (x_i − x'_i)²          (importance-weighted MSE, per model)

Each model's loss is summed (not averaged) over models, so AdamW's element-wise updates make
training model k exactly as if it were trained alone.
"""
from __future__ import annotations

import math

import torch

from pyinterp._progress import progress


def xavier_normal(K: int, m: int, n: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """W: (K, m, n) with std sqrt(2 / (m + n)) (Xavier normal, as in the paper)."""
    std = math.sqrt(2.0 / (m + n))
    return torch.randn(K, m, n, generator=gen, device=device) * std


def sample_sparse(K: int, B: int, n: int, density: torch.Tensor, gen: torch.Generator,
                  device="cpu") -> torch.Tensor:
    """x: (K, B, n); x_i = 0 with probability 1 − density[k] (density: (K,) or (K, n)), else U[0, 1]."""
    d = density.reshape(K, 1, -1).to(device)
    # One draw: v < d happens with probability d, and given that, v / d is U[0, 1].
    v = torch.rand(K, B, n, generator=gen, device=device)
    return torch.where(v < d, v / d, torch.zeros((), device=device))


def forward(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """W: (K, m, n), b: (K, n), x: (K, B, n) -> x': (K, B, n)."""
    h = torch.bmm(x, W.transpose(1, 2))  # (K, B, m)
    out = torch.bmm(h, W) + b[:, None, :]
    return torch.relu(out) if relu else out


def loss_per_model(W, b, x, importance, relu: bool = True) -> torch.Tensor:
    """importance: (K, n) -> (K,) mean over the batch of Σ_i I_i (x_i − x'_i)²."""
    err = (x - forward(W, b, x, relu)) ** 2
    return (err * importance[:, None, :]).sum(-1).mean(-1)


def train_toy_models(
    n: int,
    m: int,
    importance: torch.Tensor,
    density: torch.Tensor,
    *,
    steps: int,
    batch: int = 1024,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
    device: str = "cpu",
    relu: bool = True,
    desc: str = "toy models",
    eval_batch: int = 4096,
) -> dict:
    """Train K = len(density) models on fresh sparse batches each step (AdamW, constant lr).

    importance: (K, n); density: (K,) or (K, n) (= 1 − S). Returns W: (K, m, n), b: (K, n),
    loss: (K,) measured on a fresh batch of ``eval_batch`` examples.
    """
    K = importance.shape[0]
    gen = torch.Generator(device=device).manual_seed(seed)
    W = xavier_normal(K, m, n, gen, device).requires_grad_(True)
    b = torch.zeros(K, n, device=device, requires_grad=True)
    imp = importance.to(device)
    dens = density.to(device)
    opt = torch.optim.AdamW([W, b], lr=lr, weight_decay=weight_decay)
    for _ in progress(range(steps), desc=desc, unit="step"):
        x = sample_sparse(K, batch, n, dens, gen, device)
        loss = loss_per_model(W, b, x, imp, relu).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = sample_sparse(K, eval_batch, n, dens, gen, device)
        final = loss_per_model(W, b, x, imp, relu)
    return {"W": W.detach().cpu(), "b": b.detach().cpu(), "loss": final.cpu()}


def feature_norms(W: torch.Tensor) -> torch.Tensor:
    """W: (..., m, n) -> ‖W_i‖: (..., n)."""
    return W.norm(dim=-2)


def interference(W: torch.Tensor) -> torch.Tensor:
    """Σ_{j≠i} (Ŵ_i · W_j)² per feature. W: (..., m, n) -> (..., n)."""
    Wh = W / W.norm(dim=-2, keepdim=True).clamp_min(1e-8)
    dots = torch.einsum("...mi,...mj->...ij", Wh, W) ** 2
    return dots.sum(-1) - torch.diagonal(dots, dim1=-2, dim2=-1)


def dimensions_per_feature(W: torch.Tensor) -> torch.Tensor:
    """D* = m / ‖W‖_F². W: (..., m, n) -> (...)."""
    m = W.shape[-2]
    return m / (W ** 2).sum((-2, -1)).clamp_min(1e-12)


def fractional_dimensionality(V: torch.Tensor) -> torch.Tensor:
    """D_i = ‖V_i‖² / Σ_j (V̂_i · V_j)² for the columns V_i of V: (..., m, n) -> (..., n).

    The same formula gives feature dimensionality (V = W) and data-point dimensionality
    (V = hidden vectors h_i as columns, Henighan et al. 2023).
    """
    norms2 = (V ** 2).sum(-2)
    Vh = V / V.norm(dim=-2, keepdim=True).clamp_min(1e-8)
    denom = (torch.einsum("...mi,...mj->...ij", Vh, V) ** 2).sum(-1)
    return torch.where(norms2 > 1e-10, norms2 / denom.clamp_min(1e-12), torch.zeros_like(norms2))
