"""The skeleton every paper's ``run(config, out_dir)`` uses.

    ex = Experiment(NAME, TITLE, CITATION, config, out_dir)
    res = ex.step("train", lambda: {...tensors / JSON...})   # checkpointed, resumable
    ex.figure(fig, "loss.png", "Test loss", expect="...", check=ex.check("peak", ok, "..."),
              headline=True)          # the thumbnail on the top page (default: the first figure)
    ex.compare("D*", paper="sticky at 1 and 1/2", ours="...", comparable=False,
               key=True)              # shown on the top page (default: the first two comparisons)
    ex.setting("steps", paper="10,000", ours="2,000", why="quick scale")
    return ex.finish(metrics)          # writes metrics.json and index.html, returns the metrics

``finish`` puts what the top page of ``reproduce all`` shows under ``metrics.json``'s ``summary``
(headline figure, key numbers); a new paper gets its place there by using these calls alone.

Configs derive from ``BaseConfig``: ``Config.for_scale("tiny"|"quick"|"full")`` takes the
dataclass defaults (the paper's settings, i.e. ``full``) and applies the ``SCALES`` overrides for
the smaller scales (a config class's own on top of those of the classes it derives from).
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import ClassVar, Dict, Optional

import torch

from pyinterp._files import remove_stale_temps
from pyinterp.experiments import report
from pyinterp.experiments._io import ExperimentError, prepare_out_dir, write_json
from pyinterp.experiments._steps import Steps, config_hash

SCALES = ("tiny", "quick", "full")


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ExperimentError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    return scale


def resolve_device(device: Optional[str]) -> str:
    """'cpu', 'cuda' or 'cuda:N'; None picks cuda when available. Raises if cuda is missing."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ExperimentError(f"device {device!r} requested but no CUDA device is available "
                                  "(torch.cuda.is_available() is False); use --device cpu")
        return device
    raise ExperimentError(f"unknown device {device!r}; use cpu or cuda")


@dataclasses.dataclass
class BaseConfig:
    scale: str = "full"
    seed: int = 0
    device: str = "cpu"

    SCALES: ClassVar[Dict[str, dict]] = {}

    @classmethod
    def for_scale(cls, scale: str = "quick", **overrides):
        check_scale(scale)
        values = {}
        for klass in reversed(cls.__mro__):  # base classes' scale settings first
            values.update(vars(klass).get("SCALES", {}).get(scale, {}))
        values.update(overrides)
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - fields)
        if bad:
            raise ExperimentError(f"{cls.__name__} has no setting(s) {bad}; valid: {sorted(fields)}")
        return cls(scale=scale, **values)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Experiment:
    """Collects checkpointed steps, figures, checks and comparisons for one paper's run."""

    def __init__(self, name: str, title: str, citation: str, config: BaseConfig, out_dir,
                 *, summary: str = "", fresh: bool = False):
        self.name, self.title, self.citation = name, title, citation
        self.config = config
        self.device = resolve_device(config.device)
        self.out = prepare_out_dir(out_dir)
        self.hash = config_hash(config.as_dict())
        self.steps = Steps(self.out / "checkpoints" / self.hash, name, self.hash, fresh=fresh)
        remove_stale_temps(self.steps.dir)  # left by a killed run (run_paper holds the lock)
        self.page = report.Page(title=title, citation=citation, summary=summary, scale=config.scale)
        self.t0 = time.perf_counter()
        write_json(self.out / "config.json", {"paper": name, "config_hash": self.hash, **config.as_dict()})

    def step(self, name: str, fn) -> dict:
        return self.steps.run(name, fn)

    def check(self, name: str, passed, detail: str) -> report.Check:
        c = report.Check(name, bool(passed), detail)
        self.page.checks.append(c)
        return c

    def figure(self, fig, filename: str, title: str, expect: str, check: Optional[report.Check] = None,
               headline: bool = False):
        report.save(fig, self.out / filename)
        self.page.figures.append(report.FigureEntry(filename, title, expect, check, headline))

    def compare(self, quantity: str, paper: str, ours: str, comparable: bool = True, note: str = "",
                key: bool = False):
        self.page.comparisons.append(report.Comparison(quantity, paper, ours, comparable, note, key))

    def setting(self, name: str, paper, ours, why: str = ""):
        self.page.settings.append(report.Setting(name, str(paper), str(ours), why))

    def section(self, title: str, raw_html: str):
        self.page.sections.append((title, raw_html))

    def finish(self, metrics: dict) -> dict:
        seconds = time.perf_counter() - self.t0
        data = {
            "paper": self.name,
            "title": self.title,
            "citation": self.citation,
            "scale": self.config.scale,
            "device": self.device,
            "config": self.config.as_dict(),
            "config_hash": self.hash,
            "metrics": metrics,
            "checks": [c.as_dict() for c in self.page.checks],
            "checks_passed": sum(c.passed for c in self.page.checks),
            "checks_total": len(self.page.checks),
            "figures": [f.file for f in self.page.figures],
            "summary": report.page_summary(self.page),
            "seconds_total": seconds,
            "steps_computed": list(self.steps.computed),
            "steps_loaded": list(self.steps.loaded),
            "step_seconds": dict(self.steps.seconds),
        }
        self.page.footer = (
            f"Run took {seconds:.1f} s on {self.device} (steps computed: {len(self.steps.computed)}, "
            f"loaded from checkpoints: {len(self.steps.loaded)}). Config hash {self.hash}; "
            "metrics in <a href='metrics.json'>metrics.json</a>."
        )
        write_json(self.out / "metrics.json", data)
        report.write_page(self.page, self.out / "index.html")
        return data


def fmt(x, digits: int = 3) -> str:
    """Compact number formatting for tables."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def dumps(obj) -> str:
    return json.dumps(obj)
