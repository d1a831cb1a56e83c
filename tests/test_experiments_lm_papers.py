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


def test_induction_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("PYINTERP_PROGRESS", "0")
    data = experiments.run_paper("induction", "tiny", "cpu", tmp_path)
    m = data["metrics"]
    b1, b2 = m["best_induction"]["1l"], m["best_induction"]["2l"]
    # the 2-layer model's best induction score rises well above the 1-layer model's ...
    assert b2[-1] > max(0.2, 2 * b1[-1]), (b1, b2)
    # ... from the same start, in a jump (the largest step between evaluations carries a big share)
    rise = [y - b2[0] for y in b2]
    jumps = [b - a for a, b in zip(b2, b2[1:])]
    assert max(jumps) >= 0.3 * max(rise), b2
    # the best head is in layer 1 (a layer-0 head could only fake prefix matching by position)
    final = m["final_induction_2l"]
    assert max(final[1]) > max(final[0]), final
    # ablating the induction heads breaks copying on repeated tokens. (The ICL score on text is checked at quick scale: at n_ctx 32 token 31 − token 3 of
    # byte-level text is dominated by noise.)
    ab = m["ablation"]
    assert all(layer == 1 for layer, _ in ab["heads"]), ab["heads"]
    assert ab["ablated"]["rep_loss"] > ab["clean"]["rep_loss"] + 1.0, ab
    checks = _checks(data)
    assert checks["2-layer best induction score well above 1-layer's"]["passed"], checks
    for f in ("head_scores.png", "icl.png", "ablation.png", "index.html"):
        assert (tmp_path / "induction" / f).is_file()
