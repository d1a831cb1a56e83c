"""Paper reproductions: ``pyinterp reproduce <paper>|all``.

Each paper is a module with ``NAME``, ``TITLE``, a ``Config`` dataclass
(``Config.for_scale("tiny"|"quick"|"full")``), ``run(config, out_dir) -> dict`` writing
``metrics.json``, PNG figures and ``index.html`` into ``out_dir``, and optionally ``REQUIRES``
(import names of the packages it needs beyond the always-needed ones; checked before any work).

    from pyinterp import experiments
    experiments.reproduce("superposition", scale="quick", out="runs")   # -> runs/superposition/
    experiments.reproduce("all", scale="tiny", out="runs")              # + runs/index.html
"""
from __future__ import annotations

import importlib
import importlib.util
import time
import traceback
from pathlib import Path
from typing import List, Optional

from pyinterp.experiments._experiment import SCALES, BaseConfig, Experiment, check_scale, resolve_device
from pyinterp.experiments._io import ExperimentError, prepare_out_dir

# name -> (module, title), in the order of ``reproduce all`` and its top page. A new paper is one
# line here plus its module (see the module docstring); the top page needs nothing more.
PAPERS = {
    "solu": ("pyinterp.experiments.solu", "Softmax Linear Units (Elhage et al. 2022)"),
    "induction": ("pyinterp.experiments.induction", "In-context Learning and Induction Heads (Olsson et al. 2022)"),
    "superposition": ("pyinterp.experiments.superposition", "Toy Models of Superposition (Elhage et al. 2022)"),
    "double-descent": ("pyinterp.experiments.double_descent",
                       "Superposition, Memorization and Double Descent (Henighan et al. 2023)"),
    "monosemanticity": ("pyinterp.experiments.monosemanticity", "Towards Monosemanticity (Bricken et al. 2023)"),
    "scaling": ("pyinterp.experiments.scaling", "Scaling Monosemanticity (Templeton et al. 2024)"),
    "persona": ("pyinterp.experiments.persona", "Persona Vectors (Chen et al. 2025)"),
    "circuits": ("pyinterp.experiments.circuits", "Circuit Tracing (Ameisen et al. 2025)"),
}

DEFAULT_OUT = "runs"
# Needed by every paper (steps are safetensors files, figures matplotlib PNGs).
REQUIRES = ("safetensors", "matplotlib")


def paper_module(name: str):
    """The module for paper ``name``; ExperimentError listing valid names if unknown."""
    if name not in PAPERS:
        raise ExperimentError(f"unknown paper {name!r}; valid papers: {', '.join(PAPERS)} (or 'all')")
    return importlib.import_module(PAPERS[name][0])


def check_requirements(names) -> None:
    """Fail before any work if a package a paper needs is missing (ExperimentError naming the
    packages and the papers), instead of failing, or silently doing something else, mid-run."""
    missing = {}
    for name in names:
        for pkg in REQUIRES + tuple(getattr(paper_module(name), "REQUIRES", ())):
            if importlib.util.find_spec(pkg) is None:
                missing.setdefault(pkg, []).append(name)
    if missing:
        what = "; ".join(f"{pkg!r} (needed by {', '.join(papers)})" for pkg, papers in missing.items())
        raise ExperimentError(f"missing Python package(s): {what}. They are dependencies of pyinterp: "
                              f"reinstall it (pip install .) or pip install {' '.join(missing)}")


def make_config(name: str, scale: str = "quick", device: Optional[str] = None, **overrides):
    check_scale(scale)
    mod = paper_module(name)
    return mod.Config.for_scale(scale, device=resolve_device(device), **overrides)


def run_paper(name: str, scale: str = "quick", device: Optional[str] = None, out=DEFAULT_OUT,
              fresh: bool = False, **overrides) -> dict:
    """Run one paper into ``out/<name>/`` and return its metrics.json contents."""
    from pyinterp._rundir import WriterLock

    config = make_config(name, scale, device, **overrides)
    out_dir = prepare_out_dir(Path(out) / name)
    with WriterLock(out_dir, f"output directory of {name}"):  # one writer at a time
        return paper_module(name).run(config, out_dir, fresh=fresh)


def reproduce(paper: str, scale: str = "quick", device: Optional[str] = None, out=DEFAULT_OUT,
              fresh: bool = False, log=print, command: str = "", **overrides) -> List[dict]:
    """``paper`` is a name or 'all'. Returns one entry per paper (status, checks, seconds).

    For one paper, errors propagate. For 'all', every paper runs even if one fails, and
    ``out/index.html`` (the top page) and ``out/summary.json`` report them all; ``command`` is
    the command line shown there.
    """
    start = time.time()
    check_scale(scale)
    device_used = resolve_device(device)
    if paper != "all":
        paper_module(paper)  # unknown names fail before anything is written
    if overrides:  # settings of one paper (e.g. persona's model/judge): check them before any work
        if paper == "all":
            raise ExperimentError(f"settings {sorted(overrides)} apply to one paper, not to 'all'")
        make_config(paper, scale, device, **overrides)
    names = list(PAPERS) if paper == "all" else [paper]
    check_requirements(names)
    root = prepare_out_dir(out)
    entries = []
    for name in names:
        title = PAPERS[name][1]
        t0 = time.perf_counter()
        entry = {"name": name, "title": title, "page": False, "checks_total": None, "seconds": None}
        try:
            log(f"[pyinterp] reproducing {name} ({title}) at scale {scale} -> {Path(root) / name}")
            data = run_paper(name, scale, device, root, fresh=fresh, **overrides)
            entry.update(status="done", page=True, checks_passed=data["checks_passed"],
                         checks_total=data["checks_total"], seconds=time.perf_counter() - t0)
            log(f"[pyinterp] {name}: {data['checks_passed']}/{data['checks_total']} checks pass, "
                f"{entry['seconds']:.1f} s; page {Path(root) / name / 'index.html'}")
        except Exception as e:  # noqa: BLE001 - 'all' keeps going and reports the failure
            if paper != "all":
                raise
            entry.update(status=f"failed: {type(e).__name__}: {e}", seconds=time.perf_counter() - t0)
            log(f"[pyinterp] {name} FAILED:\n{traceback.format_exc()}")
        entries.append(entry)
    if paper == "all":
        from pyinterp.experiments import overview

        page = overview.write(root, entries, overview.run_info(scale, device_used, start, time.time(), command))
        done = [e for e in entries if e["status"] == "done"]
        log(f"[pyinterp] all: {len(done)}/{len(entries)} papers done, "
            f"{sum(e['checks_passed'] for e in done)}/{sum(e['checks_total'] for e in done)} checks pass, "
            f"total wall time {overview.duration(time.time() - start)}")
        log(f"[pyinterp] report: {page} (and {page.with_name(overview.SUMMARY_FILE)})")
    return entries


__all__ = ["PAPERS", "SCALES", "BaseConfig", "Experiment", "ExperimentError", "check_requirements",
           "make_config", "paper_module", "reproduce", "run_paper"]
