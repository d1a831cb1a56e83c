"""Dictionary quality metrics: L0, fraction of variance unexplained, loss recovered,
dead / dense latent fractions, latent density histograms.

Definitions (docs/decisions/sae-metrics.md): FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
over a batch; loss recovered (Towards Monosemanticity) =
(L_zero_ablation - L_with_dictionary) / (L_zero_ablation - L_clean).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch

from pyinterp.sae import _kernels as K


def l0(values: torch.Tensor) -> torch.Tensor:
    """Mean number of active (non-zero) latents per row. values: (..., k) -> scalar tensor."""
    return (values != 0).sum(-1).float().mean()


def fraction_variance_unexplained(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2. x, x_hat: (..., d) -> scalar tensor."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must have the same shape")
    x2 = x.reshape(-1, x.shape[-1]).double()
    r = x_hat.reshape(-1, x.shape[-1]).double()
    num = (x2 - r).pow(2).sum()
    den = (x2 - x2.mean(0)).pow(2).sum()
    return (num / den).float()


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return 1.0 - fraction_variance_unexplained(x, x_hat)


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the squared error summed over the last dim."""
    return (x.double() - x_hat.double()).pow(2).sum(-1).mean().float()


class DensityTracker:
    """Counts, on the device, how many rows activate each latent (no host sync per update
    with ``check_indices=False``, for indices from a dictionary's own encoder)."""

    def __init__(self, d_sae: int, device="cpu"):
        self.d_sae = d_sae
        self.counts = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.rows = 0

    def update(self, values: torch.Tensor, indices: torch.Tensor, check_indices: bool = True) -> None:
        k = values.shape[-1]
        v = values.reshape(-1, k)
        self.counts += K.activation_counts(v, indices.reshape(-1, k), self.d_sae,
                                           check_indices=check_indices)
        self.rows += v.shape[0]

    def density(self) -> torch.Tensor:
        """Fraction of rows on which each latent fired: (d_sae,) float64."""
        return self.counts.double() / max(self.rows, 1)


def dead_fraction(density: torch.Tensor, threshold: float = 0.0) -> float:
    """Fraction of latents whose density is <= threshold (0: never fired)."""
    return float((density <= threshold).double().mean())


def dense_fraction(density: torch.Tensor, threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than ``threshold`` of rows (dense latents)."""
    return float((density > threshold).double().mean())


def density_histogram(density: torch.Tensor, bins: int = 50, low: float = -8.0,
                      high: float = 0.0) -> dict:
    """Histogram of log10 latent densities (Towards Monosemanticity's feature-density plots).

    Returns ``{"edges": [...], "counts": [...], "dead": n}`` with never-firing latents counted
    apart (log10 0 is -inf).
    """
    d = density.detach().double().cpu()
    alive = d[d > 0]
    logd = alive.log10().clamp(low, high)
    counts = torch.histc(logd, bins=bins, min=low, max=high) if logd.numel() else torch.zeros(bins)
    edges = torch.linspace(low, high, bins + 1)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()],
            "dead": int((d <= 0).sum())}


def plot_density_histogram(density: torch.Tensor, path: Union[str, Path], *, bins: int = 50,
                           title: str = "latent density") -> Path:
    """Write the log10-density histogram as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = density_histogram(density, bins)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    e = h["edges"]
    ax.bar(e[:-1], h["counts"], width=[b - a for a, b in zip(e[:-1], e[1:])], align="edge")
    ax.set_xlabel("log10 density")
    ax.set_ylabel("latents")
    ax.set_title(f"{title} ({h['dead']} never fired)")
    fig.tight_layout()
    from pyinterp._files import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------- loss recovered
def _splice_hook(sae, mode: str):
    def hook(act, hook=None):
        if mode == "zero":
            return torch.zeros_like(act)
        return sae(act).to(act.dtype)
    return hook


def loss_recovered(model, inputs: Union[torch.Tensor, Iterable], sae=None, hook_name=None, *,
                   loss_fn: Optional[Callable] = None) -> dict:
    """Loss recovered by splicing a dictionary's reconstruction into a model (transcoders,
    crosscoders and CLTs: :func:`pyinterp.sae.splice.loss_recovered`, their replacement model).

    Either ``model`` with ``run_with_hooks(input, fwd_hooks=[(hook_name, fn)],
    return_type="loss")`` (pyinterp.models.Transformer, TransformerLens), or ``loss_fn(input,
    hook)`` with ``hook`` None (clean) or a function ``activation -> replacement``. ``inputs``
    is one batch or an iterable of batches (losses averaged over batches).
    Returns ``{"clean", "zero_ablation", "spliced", "loss_recovered"}``.
    """
    if sae is None:
        raise ValueError("sae is required")
    from pyinterp.sae import splice
    from pyinterp.sae.modules import SparseAutoencoder

    if not isinstance(sae, SparseAutoencoder):
        # transcoders, crosscoders, CLTs: their own replacement hooks
        if hook_name is not None or loss_fn is not None:
            raise TypeError(f"{type(sae).__name__} splices at its own hooks: use "
                            "pyinterp.sae.splice.loss_recovered for a custom loss_fn")
        return splice.loss_recovered(model, inputs, sae)
    hook_name = hook_name or getattr(sae, "hook_name", None)
    if loss_fn is None:
        if not hasattr(model, "run_with_hooks"):
            raise TypeError("model must have run_with_hooks(..., return_type='loss'), or pass loss_fn")
        if hook_name is None:
            raise ValueError("hook_name is required (the dictionary has no cfg.hook_name)")

        def loss_fn(batch, replace):
            # replace(activation, hook) -> tensor: the hook-function signature TL uses.
            hooks = [] if replace is None else [(hook_name, replace)]
            return model.run_with_hooks(batch, fwd_hooks=hooks, return_type="loss")

    def losses(b):
        return loss_fn(b, None), loss_fn(b, _splice_hook(sae, "zero")), loss_fn(b, _splice_hook(sae, "sae"))

    with torch.no_grad():
        return splice.spliced_losses(sae, inputs, losses)


@torch.no_grad()
def evaluate(sae, batches: Iterable, *, dense_threshold: float = 0.1) -> dict:
    """L0, FVU (overall and per output), MSE, dead/dense fractions and the density histogram
    of any dictionary over ``batches``: (N, d_in) tensors for one-input dictionaries, or dicts
    hook -> activations holding every hook the dictionary reads (``needed_hooks()``).

    FVU = sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 with y the dictionary's target (the input
    for SAEs and crosscoders, the output hook for transcoders and CLTs), per output layer in
    ``fvu_per_output`` and summed over outputs in ``fvu``; MSE per row summed over outputs. L0
    counts active latents per row (all layers of a CLT; ``l0_per_layer`` splits it)."""
    tracker = DensityTracker(sae.n_latents, sae.W_enc.device)
    groups = sae.n_latents // sae.layer_size
    num = sum_x = sum_x2 = l0_groups = None
    rows = 0
    was_training = sae.training
    sae.eval()
    try:
        for b in batches:
            v, i, target, recon = sae.reconstruct(*_inputs(sae, b))
            tracker.update(v, i, check_indices=False)  # the dictionary's own code
            t, r = target.double(), recon.double()
            n_num = (t - r).pow(2).sum((1, 2))
            n_sx, n_sx2 = t.sum(1), t.pow(2).sum((1, 2))
            fired = (v != 0).to(torch.float64)
            n_l0 = torch.zeros(groups, dtype=torch.float64, device=v.device).index_add_(
                0, torch.div(i, sae.layer_size, rounding_mode="floor").reshape(-1), fired.reshape(-1))
            if num is None:
                num, sum_x, sum_x2, l0_groups = n_num, n_sx, n_sx2, n_l0
            else:
                num, sum_x, sum_x2, l0_groups = (num + n_num, sum_x + n_sx, sum_x2 + n_sx2,
                                                 l0_groups + n_l0)
            rows += target.shape[1]
    finally:
        sae.train(was_training)
    if rows == 0:
        raise ValueError("batches is empty")
    den = sum_x2 - sum_x.pow(2).sum(-1) / rows
    dens = tracker.density()
    out = {"l0": float(l0_groups.sum()) / rows, "fvu": float(num.sum() / den.sum()),
           "mse": float(num.sum()) / rows, "dead_fraction": dead_fraction(dens),
           "dense_fraction": dense_fraction(dens, dense_threshold), "density": dens,
           "histogram": density_histogram(dens)}
    if num.numel() > 1:
        out["fvu_per_output"] = (num / den).tolist()
    if groups > 1:
        out["l0_per_layer"] = (l0_groups / rows).tolist()
    return out


def _inputs(sae, batch) -> tuple:
    if isinstance(batch, torch.Tensor) and len(sae.input_widths()) == 1:
        return (batch.reshape(-1, sae.d_in).to(sae.W_enc.device),)
    return tuple(t.reshape(-1, t.shape[-1]).to(sae.W_enc.device)
                 for t in sae.batch_inputs(batch, "evaluate"))
