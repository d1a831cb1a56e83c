"""Paper 8 (circuit tracing) at tiny scale: a 2-layer model with MLPs, a CLT, graphs of a copy
prompt and a recall prompt, interventions; the page, the graph JSON and HTML files."""
import json

import pytest

from experiment_testing import tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    yield from tiny_run(tmp_path_factory, "circuits")


def test_checks_pass(run):
    out, data = run
    checks = {c["name"]: c for c in data["checks"]}
    assert len(checks) == 5
    failed = [f"{c['name']}: {c['detail']}" for c in checks.values() if not c["passed"]]
    assert not failed, failed
    m = data["metrics"]
    assert max(m["clt"]["fvu"]) < 0.5 and m["clt"]["agreement"] > 0.5
    # the copy prompt: the most influential token is the one after the earlier occurrence
    assert m["copy"]["model_correct"]
    assert m["copy"]["most_influential_token"].startswith(f"embedding @{m['copy']['earlier_position']} ")
    for name, g in m["graphs"].items():
        assert 0 < g["scores"]["replacement"] <= 1 and 0 < g["scores"]["completeness"] <= 1, name
        assert g["scores"]["kept_influence_fraction"] >= 0.8
        assert g["stats"]["n_kept_features"] < g["stats"]["n_features_active"]
    for res in m["interventions"].values():
        assert res[-1]["predicted"] < 0 and res[-1]["actual"] < 0


def test_page_and_graph_files(run):
    out, data = run
    html = (out / "index.html").read_text()
    assert "graphs/copy.html" in html and "graphs/copy.json" in html
    for f in ("copy_graph.png", "interventions.png", "metrics.json", "graphs/copy.json", "graphs/copy.html"):
        assert (out / f).is_file(), f
    g = json.loads((out / "graphs" / "copy.json").read_text())
    assert set(g) == {"metadata", "qParams", "nodes", "links"}
    ids = {n["node_id"] for n in g["nodes"]}
    assert all(l["source"] in ids and l["target"] in ids for l in g["links"])
    assert data["metrics"]["graphs"]["copy"]["stats"]["n_kept_nodes"] == len(g["nodes"])
    view = (out / "graphs" / "copy.html").read_text()
    assert '"contexts": [{' in view and "<script src" not in view  # hover cards embedded, no external script


def test_resume_loads_every_step(run, tmp_path):
    import shutil

    from pyinterp import experiments

    out, data = run
    shutil.copytree(out, tmp_path / "circuits")
    again = experiments.run_paper("circuits", scale="tiny", device="cpu", out=tmp_path)
    assert again["steps_computed"] == [] and set(again["steps_loaded"]) >= {"lm", "clt", "evaluate"}
    assert again["metrics"]["graphs"]["copy"]["scores"] == data["metrics"]["graphs"]["copy"]["scores"]
