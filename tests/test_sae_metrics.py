"""pyinterp.sae.metrics on cases with known answers."""
import pytest
import torch

from pyinterp.sae import TopKSAE, metrics
from sae_testing import one_thread  # noqa: F401  (autouse: one torch thread)


def test_l0_and_fvu_known_values():
    values = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]])
    assert float(metrics.l0(values)) == pytest.approx(1.5)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    # variance about the mean (0, 0): 1 + 1 + 4 + 4 = 10
    assert float(metrics.fraction_variance_unexplained(x, x)) == 0.0
    assert float(metrics.fraction_variance_unexplained(x, torch.zeros_like(x))) == pytest.approx(1.0)
    assert float(metrics.fraction_variance_unexplained(x, x * 0.5)) == pytest.approx(0.25)
    assert float(metrics.explained_variance(x, x * 0.5)) == pytest.approx(0.75)
    assert float(metrics.mse(x, x * 0.5)) == pytest.approx(10 * 0.25 / 4)
    with pytest.raises(ValueError, match="same shape"):
        metrics.fraction_variance_unexplained(x, x[:2])


def test_density_dead_dense_and_histogram(tmp_path):
    t = metrics.DensityTracker(4)
    t.update(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([[0, 1], [0, 2]]))
    t.update(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0, 3], [0, 3]]))
    dens = t.density()
    # latent 0 fires on all 4 rows; 1 once; 2 and 3 only as padding (value 0): never
    torch.testing.assert_close(dens, torch.tensor([1.0, 0.25, 0.0, 0.0], dtype=torch.float64))
    assert metrics.dead_fraction(dens) == 0.5
    assert metrics.dense_fraction(dens, 0.5) == 0.25
    h = metrics.density_histogram(dens, bins=4, low=-4, high=0)
    assert h["dead"] == 2 and sum(h["counts"]) == 2 and len(h["edges"]) == 5
    png = metrics.plot_density_histogram(dens, tmp_path / "density.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _ToyModel:
    """loss = mean((h - target)^2) with h = tokens (float) at hook 'h': splicing is checkable."""

    def __init__(self, target):
        self.target = target

    def run_with_hooks(self, tokens, fwd_hooks=(), return_type="loss"):
        assert return_type == "loss"
        h = tokens.clone()
        for name, fn in fwd_hooks:
            assert name == "h"
            out = fn(h, None)
            h = h if out is None else out
        return (h - self.target).pow(2).mean()


def test_loss_recovered_known_case():
    target = torch.ones(3, 4, 8)
    tokens = torch.ones(3, 4, 8)  # clean loss 0, zero ablation loss 1

    class Half(TopKSAE):
        def forward(self, x):       # a "dictionary" that reconstructs half the activation
            return x * 0.5

    sae = Half(8, 16, k=2, hook_name="h")
    out = metrics.loss_recovered(_ToyModel(target), tokens, sae)
    assert out["clean"] == pytest.approx(0.0)
    assert out["zero_ablation"] == pytest.approx(1.0)
    assert out["spliced"] == pytest.approx(0.25)
    assert out["loss_recovered"] == pytest.approx(0.75)
    # the same through a plain callable, over several batches
    calls = []

    def loss_fn(batch, replace):
        calls.append(replace is None)
        h = batch if replace is None else replace(batch, None)
        return (h - 1).pow(2).mean()
    out2 = metrics.loss_recovered(None, [tokens, tokens], sae, loss_fn=loss_fn)
    assert out2["loss_recovered"] == pytest.approx(0.75) and len(calls) == 6


def test_loss_recovered_with_a_real_model_and_a_perfect_dictionary():
    from pyinterp.models import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_vocab=30, n_ctx=8,
                                          act_fn="gelu"))
    tokens = torch.randint(0, 30, (2, 8), generator=torch.Generator().manual_seed(0))

    class Identity(TopKSAE):
        def forward(self, x):
            return x

    out = metrics.loss_recovered(model, tokens, Identity(8, 8, k=1, hook_name="blocks.0.hook_resid_mid"))
    assert out["spliced"] == pytest.approx(out["clean"])
    assert out["loss_recovered"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hook_name is required"):
        metrics.loss_recovered(model, tokens, TopKSAE(8, 8, k=1))


def test_evaluate_summary():
    sae = TopKSAE(8, 16, k=3, seed=0)
    x = torch.randn(50, 8)
    res = metrics.evaluate(sae, [x[:25], x[25:]])
    assert res["l0"] <= 3
    torch.testing.assert_close(torch.tensor(res["fvu"], dtype=torch.float64),
                               metrics.fraction_variance_unexplained(x, sae(x)).double(),
                               atol=1e-5, rtol=1e-5)
    assert 0.0 <= res["dead_fraction"] <= 1.0 and res["density"].shape == (16,)
