"""Papers 1 and 2 at tiny scale: SoLU vs GELU, and induction heads in 2-layer vs 1-layer models."""
import pytest

from pyinterp import experiments


def _checks(data):
    return {c["name"]: c for c in data["checks"]}


def test_solu_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("PYINTERP_PROGRESS", "0")
    data = experiments.run_paper("solu", "tiny", "cpu", tmp_path)
    m = data["metrics"]
    # SoLU's softmax makes neurons (before the LN) sparser than GELU's, at a small loss cost
    assert m["participation_ratio"]["SoLU (before LN)"] < m["participation_ratio"]["GELU"]
    assert m["loss_ratio"] < 1.15, m["eval_loss"]
    out = tmp_path / "solu"
    html = (out / "index.html").read_text()
    assert "Top-activating contexts" in html and "neuron" in html
    for f in ("loss.png", "sparsity.png", "monosemanticity.png", "metrics.json"):
        assert (out / f).is_file()


def test_neuron_proxy_concentration():
    import torch

    from pyinterp.experiments import neuron_proxy

    tokens = torch.tensor([5, 5, 5, 7, 8, 9])
    acts = torch.tensor([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0], [0.0, 2.5], [0.0, 0.1], [0.0, 0.2]])
    r = neuron_proxy.unit_report(acts, tokens, k=3)
    assert r["concentration"].tolist() == [1.0, pytest.approx(2 / 3)]  # unit 1 top-3 tokens: 5, 7, 5
    assert r["monosemantic_fraction"] == 0.5
    assert neuron_proxy.participation_ratio(torch.tensor([[1.0, 0, 0, 0]])).item() == pytest.approx(0.25)


@pytest.mark.xfail(strict=False, reason="issue 7, not done: at tiny scale (600 steps) the 2-layer model has not "
                   "formed induction heads yet (best score ~0.07, also with 50% repeated-random rows "
                   "of random period); see docs/decisions/induction-repeated-spans.md")
def test_induction_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("PYINTERP_PROGRESS", "0")
    data = experiments.run_paper("induction", "tiny", "cpu", tmp_path)
    m = data["metrics"]
    b1, b2 = m["best_induction"]["1l"][-1], m["best_induction"]["2l"][-1]
    # the 2-layer model's best induction score rises well above the 1-layer model's
    assert b2 > max(0.2, 2 * b1), (b1, b2)
    # ablating its induction heads removes in-context learning
    ab = m["ablation"]
    assert ab["ablated"]["icl"] > ab["clean"]["icl"], ab
    assert ab["ablated"]["rep_loss"] > ab["clean"]["rep_loss"], ab
    for f in ("head_scores.png", "icl.png", "ablation.png", "index.html"):
        assert (tmp_path / "induction" / f).is_file()
