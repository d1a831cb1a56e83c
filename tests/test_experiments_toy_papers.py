"""Papers 3 and 4 at tiny scale: the qualitative results the papers report, and resume."""
import json

import pytest

from pyinterp import experiments
from pyinterp.experiments import _steps


def _checks(data):
    return {c["name"]: c for c in data["checks"]}


def test_superposition_tiny_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("PYINTERP_PROGRESS", "0")

    def interrupt(exp, step):
        if step == "dimensionality":
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(_steps, "BEFORE_STEP", [interrupt])
    with pytest.raises(KeyboardInterrupt):
        experiments.run_paper("superposition", "tiny", "cpu", tmp_path)
    monkeypatch.setattr(_steps, "BEFORE_STEP", [])
    data = experiments.run_paper("superposition", "tiny", "cpu", tmp_path)
    assert data["steps_loaded"] == ["sweep", "phase"]  # finished parts were not redone
    assert data["steps_computed"] == ["dimensionality", "pentagon"]
    c = _checks(data)
    # the paper's qualitative results
    assert c["sparse: more features than dimensions"]["passed"], c
    assert c["phase diagram has all three phases in the right places"]["passed"], c
    reps = data["metrics"]["sweep"]["features_represented"]
    assert reps[-1] > 5 and reps[-1] > reps[0]
    out = tmp_path / "superposition"
    for f in ("metrics.json", "index.html", "sweep.png", "phase_diagram.png", "dimensionality.png", "pentagon.png"):
        assert (out / f).is_file(), f
    assert json.loads((out / "metrics.json").read_text())["scale"] == "tiny"
    assert "Elhage et al. 2022" in (out / "index.html").read_text()


def test_double_descent_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("PYINTERP_PROGRESS", "0")
    data = experiments.run_paper("double-descent", "tiny", "cpu", tmp_path)
    loss = data["metrics"]["mean_test_loss"]
    # test loss is not monotone in T: some larger data set generalises worse than a smaller one
    assert any(loss[j] > loss[i] for i in range(len(loss)) for j in range(i + 1, len(loss))), loss
    assert loss[-1] < max(loss)
    c = _checks(data)
    assert c["memorisation gives way to features"]["passed"], c
    assert (tmp_path / "double-descent" / "test_loss.png").is_file()
