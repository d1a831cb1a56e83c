"""Scaling Monosemanticity at tiny scale: the paper's qualitative results hold (seconds on CPU)."""
import json

import pytest
import torch

from experiment_testing import tiny_run
from pyinterp.experiments import _steps, scaling


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    yield from tiny_run(tmp_path_factory, "scaling")


def _check(data, name):
    return next(c for c in data["checks"] if c["name"] == name)


def test_larger_dictionaries_reach_lower_loss(run_dir):
    _, data = run_dir
    m = data["metrics"]
    assert m["sizes"] == sorted(m["sizes"]) and len(m["sizes"]) >= 3
    assert all(b < a for a, b in zip(m["eval_loss"], m["eval_loss"][1:])), m["eval_loss"]
    assert m["power_law_size"]["b"] < 0 and m["power_law_compute"]["b"] < 0
    assert _check(data, "larger dictionaries reach lower loss")["passed"]


def test_dictionaries_are_sparse_and_useful(run_dir):
    _, data = run_dir
    m = data["metrics"]
    for n, l0, lr in zip(m["sizes"], m["l0"], m["loss_recovered"]):
        assert l0 < 0.25 * n or l0 < 0.5 * 32, (n, l0)
        assert lr > 0.5, (n, lr)


def test_clamping_shifts_the_output(run_dir):
    _, data = run_dir
    c = data["metrics"]["clamping"]
    kl = dict(zip(c["multiplier"], c["kl"]))
    assert kl[10.0] > 10 * kl[1.0] > 0
    assert c["p_promoted"][-1] > c["p_promoted_clean"]
    assert _check(data, "clamping shifts the output")["passed"]


def test_neighbourhoods_beat_random(run_dir):
    _, data = run_dir
    nb = data["metrics"]["neighbourhood"]
    assert min(nb["median_max_cos"].values()) > nb["random_median_max_cos"]


def test_page_and_figures(run_dir):
    out, data = run_dir
    page = (out / "index.html").read_text()
    for f in ("loss_scaling.png", "dead_fraction.png", "neighbourhoods.png", "clamping.png"):
        assert (out / f).stat().st_size > 1000
        assert f in page
    assert "Templeton et al. 2024" in page and "Feature splitting" in page
    assert json.loads((out / "metrics.json").read_text())["checks_total"] == data["checks_total"]


def test_resume_loads_finished_steps(run_dir):
    out, data = run_dir
    seen = []
    _steps.BEFORE_STEP.append(lambda exp, step: seen.append(step))
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        again = scaling.run(scaling.Config.for_scale("tiny", device="cpu"), out)
    finally:
        torch.set_num_threads(threads)
        _steps.BEFORE_STEP.pop()
    assert seen == [] and again["steps_computed"] == []
    assert again["metrics"]["eval_loss"] == data["metrics"]["eval_loss"]
