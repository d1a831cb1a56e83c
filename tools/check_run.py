#!/usr/bin/env python3
"""Check that a `pyinterp reproduce all` folder holds everything it should: for every registered
paper a finished run with its metrics.json, every figure that metrics.json lists (a non-empty
PNG) and its index.html; plus the top index.html and summary.json. Exit 1 naming what is wrong.

    .venv/bin/python tools/check_run.py RUNS        # papers: pyinterp.experiments.PAPERS
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Sequence

PNG = b"\x89PNG\r\n\x1a\n"


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def check(root, papers: Sequence[str]) -> List[str]:
    root = Path(root)
    problems = [f"missing {name}" for name in ("index.html", "summary.json") if not _nonempty(root / name)]
    if problems:
        return problems
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    listed = [p["name"] for p in summary["papers"]]
    if listed != list(papers):
        problems.append(f"summary.json lists papers {listed}, expected {list(papers)}")
    for p in summary["papers"]:
        name, d = p["name"], root / p["name"]
        if p["status"] != "done":
            problems.append(f"{name}: {p['status']}")
        for f in ("metrics.json", "index.html"):
            if not _nonempty(d / f):
                problems.append(f"{name}: missing {f}")
        if not _nonempty(d / "metrics.json"):
            continue
        figures = json.loads((d / "metrics.json").read_text(encoding="utf-8")).get("figures", [])
        if not figures:
            problems.append(f"{name}: metrics.json lists no figures")
        for fig in figures:
            if not _nonempty(d / fig) or (d / fig).read_bytes()[:8] != PNG:
                problems.append(f"{name}: figure {fig} is missing or not a PNG")
    return problems


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    from pyinterp.experiments import PAPERS

    problems = check(args[0], list(PAPERS))
    for p in problems:
        print(f"check_run: {p}", file=sys.stderr)
    print(f"check_run: {args[0]}: " + ("every paper's metrics.json, figures and page, the top page and "
                                      "summary.json are there" if not problems else f"{len(problems)} problems"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
