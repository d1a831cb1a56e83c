"""Towards Monosemanticity at tiny scale: the paper's qualitative results hold (seconds on CPU)."""
import pytest
import torch

from experiment_testing import tiny_run
from pyinterp.experiments import dictlearn


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    yield from tiny_run(tmp_path_factory, "monosemanticity")


def test_dictionary_reconstructs_sparsely_and_recovers_loss(run_dir):
    _, data = run_dir
    m = data["metrics"]
    main = m["dictionaries"][m["main"]]
    assert main["l0"] < 0.1 * main["d_sae"]
    assert main["loss_recovered"] > 0.5
    assert main["spliced"] < main["zero_ablation"]
    assert any(n.startswith("topk") for n in m["dictionaries"])
    for d in m["dictionaries"].values():
        assert 0 <= d["dead_fraction"] <= 1 and 0 <= d["dense_fraction"] <= 1 and d["fvu"] < 1


def test_larger_dictionary_explains_more(run_dir):
    _, data = run_dir
    relu = sorted((d["d_sae"], d["fvu"]) for n, d in data["metrics"]["dictionaries"].items() if n.startswith("relu"))
    assert relu[-1][1] < relu[0][1]


def test_features_vs_neurons_and_ablation(run_dir):
    _, data = run_dir
    m = data["metrics"]
    assert m["proxy_features_mean"] > m["proxy_neurons_mean"]
    ab = m["ablation"]
    assert ab["fires"] > 0 and ab["kl_where_fires"] > 0


def test_page_and_dashboards(run_dir):
    out, data = run_dir
    page = (out / "index.html").read_text()
    for f in ("reconstruction.png", "density.png", "monosemanticity_proxy.png", "ablation.png"):
        assert (out / f).stat().st_size > 1000 and f in page
    feats = (out / "dashboards" / "features.html").read_text()
    assert feats.count("<h2 id=") == len(data["metrics"]["dashboards"]["features"])
    assert "background:rgba(255,140,0," in feats and "raises" in feats
    assert (out / "dashboards" / "neurons.html").exists()
    assert "Bricken et al. 2023" in page


def test_concentration_uses_the_shared_proxy():
    acts = torch.tensor([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0], [0.5, 3.0]])
    tokens = torch.tensor([7, 7, 8, 9])
    conc, v, p = dictlearn.concentration(acts, tokens, 2)
    assert conc.tolist() == [1.0, 0.5]
    assert p.tolist() == [[0, 1], [3, 2]] and v.shape == (2, 2)


def test_power_law_fit_recovers_exponent():
    from pyinterp.experiments.scaling import power_law_fit

    a, b = power_law_fit([10, 100, 1000], [2 * 10 ** -0.3, 2 * 100 ** -0.3, 2 * 1000 ** -0.3])
    assert abs(a - 2) < 1e-9 and abs(b + 0.3) < 1e-9


def test_dense_codes_for_selected_features_match_the_full_code():
    from pyinterp.sae import ReLUSAE

    sae = ReLUSAE(8, 32, seed=0)
    x = torch.randn(50, 8)
    full = dictlearn.dense_codes(sae, x, chunk=16)
    assert full.shape == (50, 32) and (full > 0).any()
    sel = dictlearn.dense_codes(sae, x, chunk=16, features=[3, 0, 31])
    assert torch.equal(sel, full[:, [3, 0, 31]])
