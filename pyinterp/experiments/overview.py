"""The top page of ``reproduce all``: ``<out>/index.html`` and ``<out>/summary.json``.

The report a researcher opens first: per paper its headline figure (a thumbnail linking to the
paper's page), the key numbers beside the paper's, the checks and the time; and what was run
(scale, device, backend, versions). ``summary.json`` holds the same content for scripts.

It is built only from what every paper already writes through :class:`Experiment` (the
``summary`` block of its ``metrics.json``: headline figure and key numbers, plus its checks), so
a new paper appears here by registering in ``PAPERS`` and using ``ex.figure(..., headline=True)``
and ``ex.compare(..., key=True)``; nothing here names a paper.
"""
from __future__ import annotations

import datetime
import html
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import List, Optional, Sequence

from pyinterp.experiments._io import write_json, write_text
from pyinterp.experiments.report import CSS

SUMMARY_FILE = "summary.json"
INDEX_FILE = "index.html"
_VERSIONED = ("pyinterp", "torch", "numpy", "tokenizers", "safetensors", "matplotlib", "tqdm", "triton")


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_info(scale: str, device: str, started: float, finished: float, command: str = "") -> dict:
    """What was run: scale, device, backend, versions, machine and wall time."""
    import torch

    import pyinterp
    from pyinterp._info import info_dict

    info = info_dict()
    versions = {d: _version(d) for d in _VERSIONED}
    versions["pyinterp"] = pyinterp.__version__
    versions["torch"] = torch.__version__
    versions["python"] = platform.python_version()
    stamp = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: E731
    return {
        "command": command,
        "scale": scale,
        "device": device,
        "devices": info["devices"],
        "backend": {"setting": info["backend_in_force"],
                    "available": [n for n, b in info["backends"].items() if b["available"]]},
        "versions": {k: v for k, v in versions.items() if v},
        "platform": info["platform"],
        "cpu_count": os.cpu_count(),
        "torch_threads": info["torch_threads"],
        "started": stamp(started),
        "finished": stamp(finished),
        "wall_seconds": round(finished - started, 1),
    }


def _paper(root: Path, entry: dict) -> dict:
    """One paper's row of summary.json from its reproduce entry and, if it finished, its
    metrics.json (all paths relative to ``root``)."""
    name = entry["name"]
    out = {"name": name, "title": entry["title"], "status": entry["status"],
           "seconds": entry.get("seconds"), "page": None, "metrics": None, "citation": "",
           "checks_passed": None, "checks_total": None, "checks": [],
           "headline_figure": None, "headline_title": None, "key_numbers": []}
    if entry["status"] != "done":
        return out
    data = json.loads((root / name / "metrics.json").read_text(encoding="utf-8"))
    summary = data.get("summary", {})
    head = summary.get("headline_figure")
    out.update(page=f"{name}/index.html", metrics=f"{name}/metrics.json",
               citation=data.get("citation", ""), checks=data.get("checks", []),
               checks_passed=data.get("checks_passed"), checks_total=data.get("checks_total"),
               headline_figure=f"{name}/{head}" if head else None,
               headline_title=summary.get("headline_title"), key_numbers=summary.get("key_numbers", []))
    return out


def build_summary(root, entries: Sequence[dict], run: dict) -> dict:
    root = Path(root)
    papers = [_paper(root, e) for e in entries]
    done = [p for p in papers if p["status"] == "done"]
    return {
        "title": "pyinterp: paper reproductions",
        "run": run,
        "totals": {"papers": len(papers), "done": len(done), "failed": len(papers) - len(done),
                   "checks_passed": sum(p["checks_passed"] or 0 for p in done),
                   "checks_total": sum(p["checks_total"] or 0 for p in done)},
        "papers": papers,
    }


def duration(seconds: Optional[float]) -> str:
    """'48 s', '2 min 46 s', '1 h 02 min'."""
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _e(s) -> str:
    return html.escape(str(s))


def _card(p: dict) -> str:
    done = p["status"] == "done"
    all_pass = done and p["checks_passed"] == p["checks_total"]
    cls = "pass" if all_pass else ("part" if done else "fail")
    if p["headline_figure"]:
        thumb = (f"<a class='thumb' href='{_e(p['page'])}' title='open the {_e(p['name'])} page'>"
                 f"<img src='{_e(p['headline_figure'])}' alt='{_e(p['headline_title'] or p['title'])}'></a>")
    else:
        thumb = f"<div class='thumb none'>{'no figure' if done else 'failed'}</div>"
    title = (f"<a href='{_e(p['page'])}'>{_e(p['title'])}</a>" if p["page"] else _e(p["title"]))
    if done:
        pill = f"<span class='pill {cls}'>{p['checks_passed']}/{p['checks_total']} checks</span>"
    else:
        pill = "<span class='pill fail'>failed</span>"
    meta = [pill, f"<span>{duration(p['seconds'])}</span>"]
    if done:
        meta.append(f"<a href='{_e(p['page'])}'>page</a> <a href='{_e(p['metrics'])}'>metrics.json</a>")
    if p["headline_title"]:
        meta.append(f"<span class='muted'>figure: {_e(p['headline_title'])}</span>")
    body = [f"<h2>{title}</h2>", f"<p class='meta'>{' '.join(meta)}</p>"]
    if p["key_numbers"]:
        rows = "".join(
            f"<tr><td>{_e(k['quantity'])}</td><td>{_e(k['paper'])}</td><td><b>{_e(k['ours'])}</b>"
            + ("" if k["comparable"] else " <span class='muted' title='not comparable at this scale"
               + (f": {_e(k['note'])}" if k.get("note") else "") + "'>(other scale)</span>")
            + "</td></tr>" for k in p["key_numbers"])
        body.append("<table class='kn'><tr><th></th><th>paper</th><th>this run</th></tr>" + rows + "</table>")
    failed = [c for c in p["checks"] if not c["passed"]]
    if failed:
        body.append("<ul class='failed'>" + "".join(
            f"<li><b>{_e(c['name'])}</b>: {_e(c['detail'])}</li>" for c in failed) + "</ul>")
    if not done:
        body.append(f"<pre class='err'>{_e(p['status'])}</pre>")
    return f"<article class='card {cls}'>{thumb}<div class='body'>{''.join(body)}</div></article>"


def _run_table(run: dict) -> str:
    rows = [("command", f"<code>{_e(run['command'])}</code>" if run.get("command") else "—"),
            ("scale", _e(run["scale"])),
            ("device", _e(run["device"]) + f" <span class='muted'>({_e(', '.join(run['devices']))})</span>"),
            ("backend", f"{_e(run['backend']['setting'])} <span class='muted'>(available here: "
                        f"{_e(', '.join(run['backend']['available']))})</span>"),
            ("versions", _e(", ".join(f"{k} {v}" for k, v in run["versions"].items()))),
            ("machine", _e(f"{run['platform']}, {run['cpu_count']} CPUs, torch threads {run['torch_threads']}")),
            ("when", _e(f"{run['started']} → {run['finished']} (UTC)")),
            ("wall time", _e(duration(run["wall_seconds"]))),
            ("for scripts", f"<a href='{SUMMARY_FILE}'>{SUMMARY_FILE}</a> (this page's content as JSON)")]
    return "<table class='run'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


_TOP_CSS = """
body{max-width:1180px} .lead{color:#444;max-width:52em}
.stats{display:flex;flex-wrap:wrap;gap:.8em;margin:1.2em 0 1.6em}
.stat{border:1px solid #e3e3e3;border-radius:8px;padding:.5em 1em;background:#fafafa;min-width:8em}
.stat b{display:block;font-size:1.5em} .stat span{color:#666;font-size:.85em}
.stat.pass b{color:#0a7a2f} .stat.fail b{color:#b3261e}
.card{display:flex;gap:1.2em;border:1px solid #e3e3e3;border-left:5px solid #ccc;border-radius:8px;
 padding:1em;margin:0 0 1em;background:#fff}
.card.pass{border-left-color:#2e9d52} .card.part{border-left-color:#d9a21b} .card.fail{border-left-color:#b3261e}
.thumb{flex:0 0 300px;display:flex;align-items:center;justify-content:center;background:#fcfcfc;
 border:1px solid #eee;border-radius:6px;min-height:150px}
.thumb img{max-width:100%;max-height:230px;display:block} .thumb.none{color:#999}
.body{flex:1;min-width:0} .body h2{border:0;margin:.1em 0 .2em;font-size:1.2em} .body h2 a{color:#1a3d7c;text-decoration:none}
.meta a{color:#1a3d7c;font-size:.92em} .meta{margin:.2em 0 .5em;display:flex;gap:.8em;flex-wrap:wrap;align-items:center;font-size:.9em}
.pill{border-radius:1em;padding:.1em .7em;font-weight:600;font-size:.9em}
.pill.pass{background:#e3f4e8;color:#0a6a28} .pill.part{background:#fbf0d3;color:#7a5a00} .pill.fail{background:#fbe3e1;color:#9a1d15}
.muted{color:#777} table.kn{font-size:.88em;width:100%} table.kn td:first-child{color:#444;width:30%}
.failed{color:#9a1d15;font-size:.88em;margin:.4em 0} .err{white-space:pre-wrap;font-size:.8em;color:#9a1d15}
table.run th{width:9em} table.run{font-size:.88em}
@media (max-width:760px){.card{flex-direction:column}.thumb{flex-basis:auto}}
"""


def render(summary: dict) -> str:
    t, run = summary["totals"], summary["run"]
    checks_ok = t["checks_passed"] == t["checks_total"] and t["failed"] == 0
    stats = [(f"{t['done']}/{t['papers']}", "papers reproduced", "pass" if t["failed"] == 0 else "fail"),
             (f"{t['checks_passed']}/{t['checks_total']}", "checks pass", "pass" if checks_ok else "fail"),
             (duration(run["wall_seconds"]), "wall time", ""),
             (run["scale"], f"scale, on {run['device']}", "")]
    cards = "".join(_card(p) for p in summary["papers"])
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(summary['title'])}</title><style>{CSS}{_TOP_CSS}</style></head><body>"
        f"<h1>{_e(summary['title'])}</h1>"
        "<p class='lead'>Interpretability papers reproduced end to end on pyinterp's kernels. Each card shows "
        "the paper's headline figure as this run drew it (click it for the paper's page: every figure with "
        "what it should show, the paper's numbers beside ours, the settings that differ), the key numbers "
        "beside the paper's, and the checks this run computed.</p>"
        "<div class='stats'>" + "".join(
            f"<div class='stat {c}'><b>{_e(v)}</b><span>{_e(k)}</span></div>" for v, k, c in stats) + "</div>"
        + cards + "<h2>What was run</h2>" + _run_table(run) + "</body></html>\n"
    )


def write(root, entries: Sequence[dict], run: dict) -> Path:
    """Write ``summary.json`` and ``index.html`` into ``root``; returns the index path."""
    root = Path(root)
    summary = build_summary(root, entries, run)
    write_json(root / SUMMARY_FILE, summary)
    return write_text(root / INDEX_FILE, render(summary))


__all__: List[str] = ["build_summary", "duration", "render", "run_info", "write"]
