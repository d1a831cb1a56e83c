"""The top page of `reproduce all` (index.html + summary.json) and the per-paper interface it is
built from: any paper registered in PAPERS that uses Experiment appears there, with its headline
figure, key numbers, checks and time; a failing paper is reported, not hidden."""
import dataclasses
import json
import sys
import types

import pytest

from pyinterp import experiments
from pyinterp.cli import main as cli_main
from pyinterp.experiments import BaseConfig, Experiment, report


def _fake_paper_module(modname: str, fail: bool = False):
    mod = types.ModuleType(modname)

    @dataclasses.dataclass
    class Config(BaseConfig):
        steps: int = 3

    def run(config, out_dir, fresh=False):
        if fail:
            raise RuntimeError("broken on purpose")
        ex = Experiment("fake", "A Fake Paper", "Someone 2026, <i>Fake</i>", config, out_dir, fresh=fresh)
        for name, headline in (("first.png", False), ("headline.png", True)):
            fig, ax = report.new_figure()
            ax.plot([0, 1, 2], [0, 1, 4])
            ex.figure(fig, name, f"figure {name}", "rises", headline=headline)
        ex.check("rises", True, "it rose")
        ex.check("peaks early", False, "no peak <here>")
        ex.compare("unmarked", "1", "2")
        ex.compare("slope", "≈ 2", "1.9", comparable=False, note="tiny", key=True)
        return ex.finish({"slope": 1.9})

    mod.Config, mod.run, mod.NAME, mod.TITLE = Config, run, "fake", "A Fake Paper"
    return mod


@pytest.fixture
def fake_papers(monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_paper_ok", _fake_paper_module("fake_paper_ok"))
    monkeypatch.setitem(sys.modules, "fake_paper_bad", _fake_paper_module("fake_paper_bad", fail=True))
    monkeypatch.setattr(experiments, "PAPERS", {"eighth": ("fake_paper_ok", "An Eighth Paper (Someone 2026)"),
                                                "broken": ("fake_paper_bad", "A Broken Paper (2026)")})


def test_top_page_and_summary_from_the_paper_interface(tmp_path, fake_papers):
    entries = experiments.reproduce("all", scale="tiny", device="cpu", out=tmp_path, log=lambda *a: None,
                                    command="pyinterp reproduce all")
    assert [e["status"][:7] for e in entries] == ["done", "failed:"]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["totals"] == {"papers": 2, "done": 1, "failed": 1, "checks_passed": 1, "checks_total": 2}
    run = s["run"]
    assert run["scale"] == "tiny" and run["device"] == "cpu" and run["command"] == "pyinterp reproduce all"
    assert run["backend"]["setting"] and "reference" in run["backend"]["available"]
    assert run["versions"]["torch"] and run["versions"]["python"] and run["wall_seconds"] >= 0
    eighth, broken = s["papers"]
    assert eighth["headline_figure"] == "eighth/headline.png" and eighth["page"] == "eighth/index.html"
    assert [k["quantity"] for k in eighth["key_numbers"]] == ["slope"]  # only the marked one
    assert eighth["checks_passed"] == 1 and [c["passed"] for c in eighth["checks"]] == [True, False]
    for rel in (eighth["headline_figure"], eighth["page"], eighth["metrics"]):
        assert (tmp_path / rel).is_file(), rel  # every path is relative to the run folder
    assert broken["page"] is None and "broken on purpose" in broken["status"]
    page = (tmp_path / "index.html").read_text()
    assert "src='eighth/headline.png'" in page and "href='eighth/index.html'" in page
    assert "1/2 checks" in page and "no peak &lt;here&gt;" in page  # the failing check, escaped
    assert "broken on purpose" in page and "≈ 2" in page and "(other scale)" in page
    assert "summary.json" in page and "pyinterp reproduce all" in page


def test_headline_and_key_numbers_default_to_the_first(tmp_path):
    page = report.Page("T", "c", "s", "tiny")
    assert report.page_summary(page) == {"headline_figure": None, "headline_title": None, "key_numbers": []}
    page.figures += [report.FigureEntry("a.png", "A", "x"), report.FigureEntry("b.png", "B", "y")]
    page.comparisons += [report.Comparison(q, "p", "o") for q in ("q1", "q2", "q3")]
    s = report.page_summary(page)
    assert s["headline_figure"] == "a.png" and [k["quantity"] for k in s["key_numbers"]] == ["q1", "q2"]


def test_cli_reproduce_all_prints_wall_time_and_report_path(tmp_path, fake_papers, capsys, monkeypatch):
    assert cli_main(["reproduce", "all", "--scale", "tiny", "--device", "cpu", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "total wall time" in out and f"report: {tmp_path / 'index.html'}" in out
    monkeypatch.setattr(experiments, "PAPERS", {"eighth": ("fake_paper_ok", "An Eighth Paper")})
    assert cli_main(["reproduce", "all", "--scale", "tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["run"]["command"].startswith("pyinterp reproduce all --scale tiny")


def test_duration_format():
    from pyinterp.experiments.overview import duration

    assert [duration(x) for x in (None, 4.4, 166, 839, 3725)] == ["—", "4 s", "2 min 46 s", "13 min 59 s",
                                                                 "1 h 02 min"]
