"""pyinterp.experiments framework: registry, scales, bad input, checkpointed steps, pages."""

import pytest
import torch

from pyinterp import experiments
from pyinterp.cli import main as cli_main
from pyinterp.experiments import _steps, report
from pyinterp.experiments._io import prepare_out_dir


def test_unknown_paper_lists_valid_names():
    with pytest.raises(experiments.ExperimentError, match="unknown paper 'nope'.*superposition.*double-descent"):
        experiments.reproduce("nope", scale="tiny")


def test_unknown_scale():
    with pytest.raises(experiments.ExperimentError, match="unknown scale 'huge'.*tiny, quick, full"):
        experiments.reproduce("superposition", scale="huge")
    with pytest.raises(experiments.ExperimentError, match="unknown scale"):
        experiments.make_config("superposition", scale="medium")


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(experiments.ExperimentError, match="not a directory|not writable"):
        prepare_out_dir(blocker)
    with pytest.raises(experiments.ExperimentError, match="not writable"):
        prepare_out_dir(blocker / "sub")


def test_cli_bad_input_exit_code(tmp_path, capsys):
    assert cli_main(["reproduce", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown paper" in capsys.readouterr().err
    assert cli_main(["reproduce", "superposition", "--scale", "xl", "--out", str(tmp_path)]) == 2
    assert "unknown scale" in capsys.readouterr().err


def test_missing_package_fails_before_any_work(tmp_path, monkeypatch):
    from pyinterp.experiments import solu

    monkeypatch.setattr(solu, "REQUIRES", ("tokenizers", "no_such_package_xyz"))
    out = tmp_path / "runs"
    for paper in ("all", "solu"):
        with pytest.raises(experiments.ExperimentError, match="'no_such_package_xyz' \\(needed by solu\\)"):
            experiments.reproduce(paper, scale="tiny", out=out, log=lambda *a: None)
    assert not out.exists()  # nothing was written
    experiments.check_requirements(["superposition", "double-descent"])  # theirs are all there


def test_cuda_requested_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU to check the error")
    with pytest.raises(experiments.ExperimentError, match="no CUDA device"):
        experiments.make_config("superposition", "tiny", device="cuda")


def test_for_scale_rejects_unknown_setting():
    with pytest.raises(experiments.ExperimentError, match="no setting"):
        experiments.make_config("superposition", "tiny", bogus=1)


def test_steps_resume_after_interruption(tmp_path):
    calls = []

    def fn(name):
        def f():
            calls.append(name)
            return {"w": torch.arange(3.0), "nested": {"a": torch.ones(2)}, "info": {"x": 1.5}, "n": 3}
        return f

    def boom(exp, step):
        if step == "b":
            raise KeyboardInterrupt("simulated interruption")

    s = _steps.Steps(tmp_path, "t", "h1")
    _steps.BEFORE_STEP.append(boom)
    try:
        with pytest.raises(KeyboardInterrupt):
            s.run("a", fn("a"))
            s.run("b", fn("b"))
    finally:
        _steps.BEFORE_STEP.remove(boom)
    s2 = _steps.Steps(tmp_path, "t", "h1")
    ra = s2.run("a", fn("a"))
    s2.run("b", fn("b"))
    assert calls == ["a", "b"]  # a was not redone
    assert s2.loaded == ["a"] and s2.computed == ["b"]
    assert torch.equal(ra["w"], torch.arange(3.0)) and torch.equal(ra["nested"]["a"], torch.ones(2))
    assert ra["info"] == {"x": 1.5} and ra["n"] == 3
    # a different config hash never reuses the result
    s3 = _steps.Steps(tmp_path, "t", "other")
    s3.run("a", fn("a"))
    assert s3.computed == ["a"]
    # no temporary files left behind
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_page_render_marks_checks(tmp_path):
    page = report.Page("T", "cite", "summary", "tiny")
    c = report.Check("c", False, "detail <b>")
    fig, ax = report.new_figure()
    ax.plot([0, 1], [0, 1])
    report.save(fig, tmp_path / "f.png")
    page.figures.append(report.FigureEntry("f.png", "fig", "should rise", c))
    page.checks.append(c)
    page.comparisons.append(report.Comparison("q", "1", "2", False, "scale"))
    html = report.render(page)
    assert "class=\"bad\"" in html.replace("'", '"') and "detail &lt;b&gt;" in html
    assert "different scale" in html
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_toy_models_deterministic():
    from pyinterp.experiments import toy

    kw = dict(steps=20, batch=64, lr=1e-2, seed=3)
    imp, den = torch.ones(2, 5), torch.tensor([0.1, 1.0])
    a = toy.train_toy_models(5, 2, imp, den, **kw)
    b = toy.train_toy_models(5, 2, imp, den, **kw)
    assert torch.equal(a["W"], b["W"])
    # D* and feature dimensionality of a known geometry: an antipodal pair in 1 dim
    W = torch.tensor([[[1.0, -1.0]]])
    assert torch.allclose(toy.dimensions_per_feature(W), torch.tensor([0.5]))
    assert torch.allclose(toy.fractional_dimensionality(W), torch.tensor([[0.5, 0.5]]))
